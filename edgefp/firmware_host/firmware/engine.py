"""The firmware's int8 engine (``c/src``), built for this machine as a shared library and loaded
with ctypes: what ``export-firmware --bundle`` measures RAM with, what ``--runtime firmware`` runs,
and what the tests compare with TFLite Micro.

    engine = Engine(model_bytes)                 # arena sized to what the model needs
    outputs = engine.invoke([x])                 # one sample per input; outputs in the model's shapes
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from edgefp.errors import EdgefpError
from edgefp.firmware_host.firmware.contract import DTYPES, Io, Status
from edgefp.fsutil import atomic_file

SOURCE = Path(__file__).with_name("c") / "src"
UNITS = ("engine.c", "plan.c", "fixedpoint.c", "dot.c", "ops.c", "op_*.c")  # the engine; the rest is the firmware


class EngineError(EdgefpError):
    """The engine refused a model: ``status`` is its efp_status, the message its reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = Status(status)


@dataclass(frozen=True)
class Tensor:
    """A model input or output as the engine lays it out."""

    dtype: type
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    address: int
    nbytes: int


def sources() -> list[Path]:
    return sorted({path for pattern in UNITS for path in SOURCE.glob(pattern)})


@cache
def library(dsp: bool = False) -> ctypes.CDLL:
    """The engine built for this machine (cached by its sources). ``dsp``: the kernels written for
    cores with the DSP extension, their instructions emulated in portable C (as tests build them)."""
    flags = ["-std=c99", "-O2", "-fPIC", "-shared", f"-DEFP_DSP={int(dsp)}", "-I", str(SOURCE)]
    digest = hashlib.sha256(" ".join(flags[:-1]).encode())
    for path in sorted(SOURCE.glob("*.[ch]")):
        digest.update(path.name.encode() + path.read_bytes())
    from edgefp.firmware_host.firmware.build import cache_dir

    target = cache_dir() / f"engine-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        if shutil.which("gcc") is None:
            raise EdgefpError("the firmware's engine needs gcc to be built for this machine; install it first")
        with atomic_file(str(target)) as scratch:
            result = subprocess.run(["gcc", *flags, *map(str, sources()), "-o", scratch], capture_output=True)
            if result.returncode != 0:
                raise EdgefpError(f"the engine did not build: {result.stderr.decode(errors='replace')[-300:]}")
    lib = ctypes.CDLL(str(target))
    lib.efp_engine_size.restype = ctypes.c_size_t
    lib.efp_engine_error.argtypes = [ctypes.c_void_p]
    lib.efp_engine_error.restype = ctypes.c_char_p
    lib.efp_op_name.argtypes = [ctypes.c_int32, ctypes.c_char_p]
    lib.efp_op_name.restype = ctypes.c_char_p
    for name in (
        "efp_engine_arena_needed",
        "efp_engine_arena_used",
        "efp_engine_input_count",
        "efp_engine_output_count",
    ):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_size_t
    lib.efp_engine_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    lib.efp_engine_invoke.argtypes = [ctypes.c_void_p]
    for name in ("efp_engine_input", "efp_engine_output"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        getattr(lib, name).restype = ctypes.POINTER(Io)
    return lib


class Engine:
    """One model in the engine, in an arena of ``arena_bytes`` (default: what it needs).

    Raises EngineError when the engine cannot run the model (``status`` says why)."""

    def __init__(self, model: bytes, arena_bytes: int | None = None, *, arena_offset: int = 0, dsp: bool = False):
        self._lib = library(dsp)
        self._model = ctypes.create_string_buffer(bytes(model), len(model))
        self._state = _state(self._lib)
        if arena_bytes is None:
            arena_bytes = arena_needed(model, dsp=dsp)
        self._arena = ctypes.create_string_buffer(max(arena_bytes + arena_offset, 1))
        arena = ctypes.addressof(self._arena) + arena_offset
        status = self._lib.efp_engine_init(self._state, self._model, len(model), arena, arena_bytes)
        self.arena_needed = self._lib.efp_engine_arena_needed(self._state)
        self.arena_used = self._lib.efp_engine_arena_used(self._state)
        self._check(status)
        self.inputs = self._tensors(self._lib.efp_engine_input_count, self._lib.efp_engine_input)
        self.outputs = self._tensors(self._lib.efp_engine_output_count, self._lib.efp_engine_output)

    def _check(self, status: int) -> None:
        if status != Status.OK:
            raise EngineError(status, self._lib.efp_engine_error(self._state).decode(errors="replace"))

    def _tensors(self, count, get) -> list[Tensor]:
        tensors = []
        for i in range(count(self._state)):
            io = get(self._state, i).contents
            shape = tuple(io.dims[: io.ndim])
            tensors.append(Tensor(DTYPES[io.type], shape, io.scale, io.zero_point, io.data, io.bytes))
        return tensors

    def invoke(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run once on one sample per input (its bytes as the input tensor takes them); return every
        output in the model's order, in the model's shape."""
        if len(inputs) != len(self.inputs):
            raise EdgefpError(f"the model takes {len(self.inputs)} inputs, {len(inputs)} given")
        for tensor, x in zip(self.inputs, inputs):
            x = np.ascontiguousarray(x, dtype=tensor.dtype)
            if x.nbytes != tensor.nbytes:
                raise EdgefpError(f"an input of shape {tensor.shape[1:]} ({tensor.dtype.__name__}) was expected")
            ctypes.memmove(tensor.address, x.ctypes.data, tensor.nbytes)
        self._check(self._lib.efp_engine_invoke(self._state))
        return [self._read(tensor) for tensor in self.outputs]

    @staticmethod
    def _read(tensor: Tensor) -> np.ndarray:
        out = np.empty(tensor.shape, tensor.dtype)
        ctypes.memmove(out.ctypes.data, tensor.address, tensor.nbytes)
        return out


def _state(lib: ctypes.CDLL) -> ctypes.Array:
    """Room for one efp_engine (its layout is the C side's own)."""
    return ctypes.create_string_buffer(lib.efp_engine_size())


def operators(model: bytes) -> list[str]:
    """The builtin operators of a TFLite model the engine has checked, named as the engine names them:
    its table of operator codes (the larger of builtin_code and deprecated_builtin_code each)."""

    def word(at: int, size: int = 4, signed: bool = False) -> int:
        return int.from_bytes(model[at : at + size], "little", signed=signed)

    def field(table: int, index: int) -> int | None:  # where a table's field lies, None when absent
        vtable = table - word(table, signed=True)
        offset = word(vtable + 4 + 2 * index, 2) if 4 + 2 * index < word(vtable, 2) else 0
        return table + offset if offset else None

    codes, table = set(), field(word(0), 1)  # Model.operator_codes
    vector = table + word(table) if table else 0
    for i in range(word(vector) if table else 0):
        at = vector + 4 + 4 * i
        code, deprecated = field(at + word(at), 3), field(at + word(at), 0)
        codes.add(max(word(code, signed=True) if code else 0, word(deprecated, 1, signed=True) if deprecated else 0))
    lib, buffer = library(), ctypes.create_string_buffer(12)
    return sorted(lib.efp_op_name(code, buffer).decode() for code in codes)


def arena_needed(model: bytes, *, dsp: bool | None = None) -> int:
    """Bytes of arena the engine needs for the model on this machine with the kernels for cores with
    the DSP extension (``dsp=True``), the portable ones (``False``), or whichever needs more (``None``,
    what a firmware for any core needs); its 64-bit pointers make it an upper bound for a 32-bit chip.
    EngineError when it cannot run the model."""
    if dsp is None:
        return max(arena_needed(model, dsp=False), arena_needed(model, dsp=True))
    lib = library(dsp)
    state, buffer = _state(lib), ctypes.create_string_buffer(bytes(model), len(model))
    status = lib.efp_engine_init(state, buffer, len(model), None, 0)
    if status not in (Status.OK, Status.ARENA_TOO_SMALL):
        raise EngineError(status, lib.efp_engine_error(state).decode(errors="replace"))
    return lib.efp_engine_arena_needed(state)
