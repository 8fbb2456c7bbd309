"""The contract between the host and the C firmware, written once in Python: the protocol's message types,
error codes and slot states (:mod:`edgefp.firmware_host.link.protocol`), the framing's overhead, the sensor
link's bytes, the caps both sides share (:mod:`edgefp.limits`, :mod:`edgefp.manifest`) and the engine's
status codes and input/output record (defined here). The firmware's ``c/src/efp_contract.h`` is generated
from it and checked in; a test checks it is current. Regenerate it after changing any of them:

    python -m edgefp.firmware_host.firmware.contract          # or: make contract
"""

from __future__ import annotations

import ctypes
import sys
from enum import IntEnum
from pathlib import Path

import numpy as np

from edgefp import limits, manifest, signing
from edgefp.firmware_host.device import feed
from edgefp.firmware_host.link import framing, protocol

HEADER = Path(__file__).with_name("c") / "src" / "efp_contract.h"
OOD_CAPACITY = 16  # recent OOD inputs the firmware keeps for GET_OOD (what a bundle's RAM estimate counts)
ERROR_LEN = 96  # bytes of the engine's refusal message, terminator included


class Status(IntEnum):
    """What the engine's functions return (efp_status)."""

    OK = 0
    INVALID_MODEL = 1  # not a TFLite flatbuffer, or one the engine cannot read (the error says what)
    UNSUPPORTED = 2  # an operator, type or option the engine lacks; the error names it
    ARENA_TOO_SMALL = 3  # the engine's arena_needed says how many bytes it needs
    EVAL_FAILED = 4  # an operator failed while running (the error says which)


class IoType(IntEnum):
    """Types of a model's inputs and outputs: TFLite TensorType values (efp_io_type)."""

    FLOAT32 = 0
    INT32 = 2
    INT8 = 9


DTYPES = {IoType.FLOAT32: np.float32, IoType.INT32: np.int32, IoType.INT8: np.int8}


class Io(ctypes.Structure):
    """A model input or output (efp_io): write inputs' bytes before efp_engine_invoke, read outputs' after."""

    _fields_ = [
        ("data", ctypes.c_void_p),
        ("bytes", ctypes.c_uint32),
        ("type", ctypes.c_int32),  # an IoType
        ("ndim", ctypes.c_int32),
        ("dims", ctypes.c_int32 * manifest.MAX_DIMS),
        ("scale", ctypes.c_float),  # quantisation of int8 tensors
        ("zero_point", ctypes.c_int32),
    ]


# (C name, value, what it is)
CONSTANTS = [
    ("EFP_PROTOCOL_VERSION", protocol.VERSION, "HELLO's protocol version"),
    ("EFP_RESPONSE", protocol.RESPONSE, "response type = request type | EFP_RESPONSE"),
    ("EFP_NAME_MAX", protocol.NAME_MAX, "bytes of a bundle name in HELLO"),
    ("EFP_NO_SLOT", protocol.NO_SLOT, "HELLO's active slot when none is"),
    ("EFP_FRAME_OVERHEAD", framing.OVERHEAD, "type, seq and CRC around every body"),
    ("EFP_MIN_FRAME", framing.MIN_FRAME, "the least a device's largest frame may be"),
    ("EFP_FRAME_LIMIT", framing.MAX_FRAME, "the most a device's largest frame may be"),
    ("EFP_SENSOR_FRAME", feed.SENSOR_FRAME, "frame type of the sensor link: offset:u32 (in values) | float32 values"),
    ("EFP_SENSOR_ASK", feed.SENSOR_ASK, "the byte a chip sends on its sensor link for the next window"),
    ("EFP_BENCH_MAX_RUNS", limits.MAX_INVOKES, "runs + warm-ups of one BENCH"),
    ("EFP_BENCH_MAX_SECONDS", limits.BENCH_MAX_SECONDS, "a BENCH still running after this long stops"),
    ("EFP_BUNDLE_VERSION", manifest.SCHEMA_VERSION, "the manifest's version"),
    ("EFP_MAX_LAYERS", manifest.MAX_LAYERS, "fingerprinted layers a bundle may have"),
    ("EFP_MAX_SCALES", manifest.MAX_SCALES, "int8 values of one layer's evidence output (an error at two scales)"),
    ("EFP_MAX_COARSE_FACTOR", manifest.MAX_COARSE_FACTOR, "the most an error output's second value is coarser"),
    ("EFP_MAX_DIMS", manifest.MAX_DIMS, "dimensions of a model input or output"),
    ("EFP_MAX_INPUT_ELEMENTS", manifest.MAX_INPUT_BYTES, "elements of a tensor's shape in a manifest"),
    ("EFP_MAX_OUTPUTS", manifest.MAX_OUTPUTS, "outputs of a model wrapped without a fingerprint"),
    ("EFP_MAX_CLASSES", manifest.MAX_CLASSES, "labels of a bundle"),
    ("EFP_MAX_FILES", manifest.MAX_FILES, "files of a bundle besides its manifest"),
    ("EFP_MAX_DEPTH", manifest.MAX_DEPTH, "JSON nesting of a manifest"),
    ("EFP_MAX_NAME", manifest.MAX_NAME, "bytes of a bundle's name in its manifest"),
    ("EFP_SIGNATURE_BYTES", signing.SIGNATURE_BYTES, "bytes of a bundle's signature, manifest.sig"),
    ("EFP_QUANTILES", manifest.QUANTILES, "quantiles of a layer's score in a manifest"),
    ("EFP_OOD_CAPACITY", OOD_CAPACITY, "recent OOD inputs kept for GET_OOD"),
    ("EFP_ERROR_LEN", ERROR_LEN, "bytes of the engine's error message, terminator included"),
]

# (C enum, prefix of its constants, Python enum, what it is)
ENUMS = [
    ("efp_msg", "EFP_MSG_", protocol.Msg, "message types (link/protocol.py, Msg)"),
    ("efp_err", "EFP_ERR_", protocol.Err, "error codes of ERROR answers (link/protocol.py, Err)"),
    ("efp_slot_state", "EFP_SLOT_", protocol.SlotState, "a slot's state in HELLO (link/protocol.py, SlotState)"),
    ("efp_status", "EFP_", Status, "what the engine's functions return (firmware/contract.py, Status)"),
    ("efp_io_type", "EFP_IO_", IoType, "model input and output types: TFLite's TensorType (contract.py, IoType)"),
]

C_TYPES = {
    ctypes.c_void_p: "void *",
    ctypes.c_uint32: "uint32_t",
    ctypes.c_int32: "int32_t",
    ctypes.c_float: "float",
}


def _c_field(name: str, kind) -> str:
    if hasattr(kind, "_length_"):
        return f"    {C_TYPES[kind._type_]} {name}[{kind._length_}];"
    spacer = "" if C_TYPES[kind].endswith("*") else " "
    return f"    {C_TYPES[kind]}{spacer}{name};"


def render() -> str:
    """The text of efp_contract.h."""
    lines = [
        "/* The contract between the host and the firmware: protocol, shared caps, the engine's status codes",
        " * and its input/output record. Generated from edgefp's Python definitions",
        " * (edgefp/firmware_host/firmware/contract.py) by",
        " *   python -m edgefp.firmware_host.firmware.contract",
        " * Do not edit: change the Python and regenerate. */",
        "#ifndef EFP_CONTRACT_H",
        "#define EFP_CONTRACT_H",
        "",
        "#include <stdint.h>",
        "",
    ]
    width, digits = (max(len(str(row[i])) for row in CONSTANTS) for i in (0, 1))  # aligned as clang-format does
    lines += [f"#define {name:<{width}} {value:<{digits}} /* {note} */" for name, value, note in CONSTANTS]
    for c_name, prefix, values, note in ENUMS:
        lines += ["", f"/* {note} */", f"enum {c_name} {{"]
        lines += [f"    {prefix}{member.name} = 0x{member.value:02X}," for member in values]
        lines.append("};")
    lines += ["", f"/* {Io.__doc__} */", "typedef struct {"]
    lines += [_c_field(name, kind) for name, kind in Io._fields_]
    lines += ["} efp_io;", "", "#endif", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Write efp_contract.h; with ``--check``, only say whether it is current (exit status 1 when not)."""
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        current = HEADER.exists() and HEADER.read_text() == text
        print(f"{HEADER}: {'current' if current else 'out of date: regenerate it'}")
        return 0 if current else 1
    HEADER.write_text(text)
    print(f"wrote {HEADER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
