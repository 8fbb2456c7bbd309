"""One way to run a bundle's int8 model, whatever runs it: LiteRT on Linux devices (with the Edge TPU
delegate on a Coral when present) or TFLite Micro, the interpreter microcontrollers run.

LiteRT comes from ``ai_edge_litert``, else ``tflite_runtime`` (old Raspberry Pi images), else
``tensorflow.lite``. Nothing here imports TensorFlow unless both others are missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile

import numpy as np

from edgefp.errors import EdgefpError
from edgefp.isolation import step

log = logging.getLogger(__name__)
RUNTIMES = ("litert", "tflm", "edgetpu", "firmware")
EDGETPU_LIBRARY = {"linux": "libedgetpu.so.1", "darwin": "libedgetpu.1.dylib", "win32": "edgetpu.dll"}


def litert_module():
    """The LiteRT interpreter module: ai_edge_litert, else tflite_runtime, else tensorflow.lite."""
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        try:
            from tflite_runtime import interpreter
        except ImportError:
            try:
                from tensorflow import lite as interpreter
            except ImportError:
                raise EdgefpError("no LiteRT interpreter found: pip install 'edgefp[device]'") from None
    return interpreter


def litert_interpreter(model_bytes: bytes, delegates=(), **options):
    """A LiteRT interpreter of ``model_bytes``, its tensors allocated: one thread, and without the default
    XNNPACK delegate (LiteRT's own int8 kernels, repeatable and closest to TFLite Micro); ``options`` go
    to the interpreter (``experimental_preserve_all_tensors=True`` keeps every tensor readable)."""
    module = litert_module()
    resolver = getattr(module, "OpResolverType", None)
    if resolver:
        options["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = module.Interpreter(
        model_content=model_bytes, experimental_delegates=list(delegates), num_threads=1, **options
    )
    interpreter.allocate_tensors()
    return interpreter


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Preprocessed float samples as a model's int8 input of ``scale`` and ``zero_point`` takes them."""
    return np.clip(np.round(x / np.float32(scale)) + zero_point, -128, 127).astype(np.int8)


def read_tensors(interpreter, samples: np.ndarray, tensors) -> list[np.ndarray]:
    """Invoke a LiteRT ``interpreter`` built with every tensor preserved (:func:`litert_interpreter`) on
    each int8 sample and read the ``tensors`` (indices), dequantised: one float64 array (N, ...) each."""
    quantization = {detail["index"]: detail["quantization"] for detail in interpreter.get_tensor_details()}
    entry, read = interpreter.get_input_details()[0]["index"], [[] for _ in tensors]
    for sample in samples:
        interpreter.set_tensor(entry, sample[None])
        interpreter.invoke()
        for values, index in zip(read, tensors):
            scale, zero_point = quantization[index]
            values.append((interpreter.get_tensor(index)[0].astype(np.float64) - zero_point) * scale)
    return [np.asarray(values) for values in read]


class LiteRT:
    """LiteRT (TFLite) interpreter on the CPU, or on the Edge TPU through its delegate."""

    name = "litert"

    def __init__(self, model_bytes: bytes, *, edgetpu: bool = False):
        module = litert_module()
        delegates = []
        if edgetpu:
            library = EDGETPU_LIBRARY.get(sys.platform, "libedgetpu.so.1")
            try:
                ctypes.CDLL(library)  # fails cleanly where load_delegate would leave a broken object behind
                delegates = [module.load_delegate(library)]
                self.name = "edgetpu"
            except (ValueError, OSError, AttributeError) as exc:
                log.warning(
                    "Edge TPU delegate unavailable (%s: %s); running on the CPU. Install the Edge TPU runtime "
                    "(libedgetpu1-std) and plug in the accelerator to use it.",
                    library,
                    exc,
                )
        with step("loading the model into LiteRT"):
            self._interpreter = litert_interpreter(model_bytes, delegates)
        detail, outputs = self._interpreter.get_input_details()[0], self._interpreter.get_output_details()
        self._input, self._outputs = detail["index"], [output["index"] for output in outputs]
        self.input_spec = _spec(detail)
        self.output_specs = [_spec(output) for output in outputs]

    def invoke(self, sample: np.ndarray) -> list[np.ndarray]:
        """Run one quantised sample (no batch axis); return every output in the model's order."""
        self.set_input(sample)
        self.run()
        return [self._interpreter.get_tensor(index)[0] for index in self._outputs]

    def set_input(self, sample: np.ndarray) -> None:
        """The first step of :meth:`invoke`: copy one sample (no batch axis) into the input tensor."""
        self._interpreter.set_tensor(self._input, sample[None])

    def run(self) -> None:
        """The interpreter's own invoke on the input set last (what a latency of the kernels alone times)."""
        self._interpreter.invoke()

    def ops(self) -> list[str]:
        return sorted({op["op_name"] for op in self._interpreter._get_ops_details()} - {"DELEGATE"})

    def input_details(self) -> list[dict]:
        return self._interpreter.get_input_details()

    def output_details(self) -> list[dict]:
        return self._interpreter.get_output_details()


class TFLiteMicro:
    """The TFLite Micro interpreter: the kernels a microcontroller runs, in a fixed tensor arena.

    Without ``arena_bytes`` the arena is measured (:func:`tflm_arena_bytes`); a given one (a bundle's
    ``tflm_arena_bytes``) is checked first (:func:`check_tflm_arena`): TFLite Micro is only ever handed
    an arena it has been seen to allocate and run the model in."""

    name = "tflm"

    def __init__(self, model_bytes: bytes, arena_bytes: int | None = None):
        runtime = _tflm_runtime()
        if arena_bytes is None:
            arena_bytes = tflm_arena_bytes(model_bytes)
        else:
            check_tflm_arena(model_bytes, arena_bytes)
        with step("allocating the model in TFLite Micro"), captured_output() as messages:
            try:
                self._interpreter = runtime.Interpreter.from_bytes(model_bytes, arena_size=arena_bytes)
            except Exception:  # noqa: BLE001 - the wrapper raises RuntimeError, struct.error, ValueError...
                raise EdgefpError(f"TFLite Micro cannot run the model: {_micro_failure(messages())}") from None
            self._n_outputs = _count(self._interpreter.get_output_details)
            self.input_spec = _spec(self._interpreter.get_input_details(0))
            self.output_specs = [_spec(self._interpreter.get_output_details(i)) for i in range(self._n_outputs)]

    def invoke(self, sample: np.ndarray) -> list[np.ndarray]:
        """Run one quantised sample (no batch axis); return every output in the model's order."""
        self.set_input(sample)
        self.run()
        return [self._interpreter.get_output(i)[0] for i in range(self._n_outputs)]

    def set_input(self, sample: np.ndarray) -> None:
        """The first step of :meth:`invoke`: copy one sample (no batch axis) into the input tensor."""
        self._interpreter.set_input(sample[None], 0)

    def run(self) -> None:
        """The interpreter's own invoke on the input set last (what a latency of the kernels alone times)."""
        self._interpreter.invoke()


class FirmwareEngine:
    """The edgefp firmware's int8 engine, built for this machine and loaded once: the arithmetic a
    microcontroller running the edgefp firmware does (docs/firmware.md), byte for byte."""

    name = "firmware"

    def __init__(self, model_bytes: bytes):
        from edgefp.firmware_host.firmware.engine import Engine, EngineError

        try:
            with step("setting the model up in the firmware's engine"):
                self._engine = Engine(model_bytes)
        except EngineError as refused:
            raise EdgefpError(f"the firmware engine cannot run the model: {refused}") from None
        first, *_ = self._engine.inputs
        self.input_spec = first.shape[1:], first.dtype
        self.output_specs = [(output.shape[1:], output.dtype) for output in self._engine.outputs]

    def invoke(self, sample: np.ndarray) -> list[np.ndarray]:
        """Run one sample (no batch axis); return every output in the model's order."""
        return [output[0] for output in self._engine.invoke([sample])]


def _spec(detail: dict) -> tuple[tuple[int, ...], type]:
    """(shape without the batch axis, dtype) of an interpreter's tensor details."""
    return tuple(int(n) for n in detail["shape"][1:]), detail["dtype"]


def _count(details) -> int:
    """How many inputs or outputs an interpreter has, from its ``get_*_details(index)``."""
    count = 0
    while True:
        try:
            details(count)
        except IndexError:
            return count
        count += 1


def _tflm_runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise EdgefpError("the TFLite Micro interpreter is missing: pip install 'edgefp[mcu]'") from None
    return runtime


@contextlib.contextmanager
def captured_output():
    """Silence what native code writes to stdout and catch what it writes to stderr (TFLite Micro
    and the converter report failures there); yields a function returning the text caught so far."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as sink, tempfile.TemporaryFile("w+") as log:
        os.dup2(log.fileno(), 2)
        os.dup2(sink.fileno(), 1)
        try:
            yield lambda: (log.flush(), log.seek(0), log.read())[-1]
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


UNKNOWN_OPERATOR = ("Didn't find op for builtin opcode", "Unsupported", "not supported")  # whatever the arena


def _micro_failure(log: str) -> str:
    """The operator TFLite Micro failed on, from its log, or its last message."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    naming = (*UNKNOWN_OPERATOR, "failed to prepare")  # an operator may also fail to prepare for want of arena
    return next(
        (line for line in lines if any(text in line for text in naming)), lines[-1] if lines else "unknown failure"
    )


def open_runtime(model_bytes: bytes, runtime: str = "litert", *, arena_bytes: int | None = None):
    """An interpreter for ``model_bytes``: ``litert``, ``tflm``, ``edgetpu`` (LiteRT with the delegate) or
    ``firmware`` (the edgefp firmware's engine on this machine)."""
    if runtime == "tflm":
        return TFLiteMicro(model_bytes, arena_bytes)
    if runtime == "firmware":
        return FirmwareEngine(model_bytes)
    if runtime in ("litert", "edgetpu"):
        return LiteRT(model_bytes, edgetpu=runtime == "edgetpu")
    raise EdgefpError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")


ARENA_LIMIT = 1 << 30  # the largest TFLite Micro arena tried or accepted
_arena_bounds: dict[str, list[int]] = {}  # model SHA-256 -> [largest arena seen too small, smallest seen to fit]


def tflm_arena_bytes(model_bytes: bytes) -> int:
    """The smallest tensor arena (to 16 bytes) in which TFLite Micro allocates and runs the model.

    Every size is tried in a child process (:class:`_ArenaProbe`): for some arenas too small, TFLite
    Micro crashes instead of failing. The search starts from the allocation TFLite Micro records in an
    arena that fits, a lower bound (it leaves out what is used only while allocating)."""
    bounds = _bounds(model_bytes)
    with _ArenaProbe(model_bytes) as probe:
        while bounds[1] is None:
            size = _round16(max(64 * 1024, 10 * len(model_bytes), 2 * bounds[0]))
            if size > ARENA_LIMIT:
                raise EdgefpError(f"TFLite Micro cannot run the model (in arenas up to 1 GiB): {probe.failure}")
            probe.settle(size, bounds)
        bounds[0] = max(bounds[0], _round16(probe.recorded) - 16)
        while bounds[1] - bounds[0] > 16:
            probe.settle((bounds[0] + bounds[1]) // 32 * 16, bounds)
    return bounds[1]


class ArenaError(EdgefpError):
    """A bundle's ``tflm_arena_bytes`` that TFLite Micro must not be given."""


def check_tflm_arena(model_bytes: bytes, arena_bytes) -> None:
    """Refuse, with one line, an arena (a bundle's ``tflm_arena_bytes``) that TFLite Micro cannot
    allocate and run the model in; such an arena is never handed to TFLite Micro in this process."""
    if isinstance(arena_bytes, bool) or not isinstance(arena_bytes, int) or not 16 <= arena_bytes <= ARENA_LIMIT:
        raise ArenaError(
            f"tflm_arena_bytes {arena_bytes!r} is not an arena size (16 bytes to 1 GiB); convert the bundle again"
        )
    bounds = _bounds(model_bytes)
    if bounds[1] is None or bounds[0] < arena_bytes < bounds[1]:
        with _ArenaProbe(model_bytes) as probe:
            probe.settle(arena_bytes, bounds)
    if arena_bytes <= bounds[0]:
        raise ArenaError(
            f"tflm_arena_bytes {arena_bytes} is below the {tflm_arena_bytes(model_bytes):,} bytes TFLite Micro "
            "needs for the bundle's model; convert the bundle again"
        )


def _bounds(model_bytes: bytes) -> list:
    return _arena_bounds.setdefault(hashlib.sha256(model_bytes).hexdigest(), [0, None])


def _round16(n: int) -> int:
    return (n + 15) // 16 * 16


class _ArenaProbe:
    """TFLite Micro allocating one model in arenas of given sizes and running it once on zeros, in a
    child process that is started again whenever an arena too small made it crash."""

    def __init__(self, model_bytes: bytes):
        self.model, self.process = model_bytes, None
        self.failure = ""  # why the last arena that did not fit failed
        self.recorded = 0  # TFLite Micro's recorded allocation in the last arena that fit

    def __enter__(self) -> _ArenaProbe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait()
            self.process.stdout.close()
            self.process = None

    def settle(self, size: int, bounds: list) -> None:
        """Try ``size``; narrow ``bounds`` ([largest too small, smallest that fits]) with the answer."""
        if self.fits(size):
            bounds[1] = size if bounds[1] is None else min(bounds[1], size)
        else:
            bounds[0] = max(bounds[0], size)

    def fits(self, size: int) -> bool:
        if self.process is None:
            package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from edgefp.runtime import _probe_arenas; _probe_arenas()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )
            self.process.stdin.write(b"%d\n" % len(self.model) + self.model)
        try:
            self.process.stdin.write(b"%d\n" % size)
            self.process.stdin.flush()
        except BrokenPipeError:
            pass
        answer = self.process.stdout.readline()
        if answer.startswith(b"failed "):
            self.failure = answer[7:].decode(errors="replace").strip()
            if any(text in self.failure for text in UNKNOWN_OPERATOR):
                raise EdgefpError(f"TFLite Micro cannot run the model: {self.failure}")
            return False
        allocated = answer == b"allocated\n"
        if allocated:
            answer = self.process.stdout.readline()
            if answer.startswith(b"ran "):
                self.recorded = int(answer[4:])
                return True
        crash = _signal_name(self.process.wait())
        self.close()
        if allocated:
            raise EdgefpError(f"TFLite Micro crashed ({crash}) running the model; a microcontroller cannot run it")
        self.failure = f"TFLite Micro crashed ({crash}) allocating it"
        return False


def _probe_arenas() -> None:
    """The child of :class:`_ArenaProbe`: a model (its length on a line, then its bytes) on stdin, then
    one arena size per line; for each, 'allocated' and 'ran RECORDED_BYTES', or 'failed WHY'."""
    runtime = _tflm_runtime()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    model = stdin.read(int(stdin.readline()))
    for line in stdin:
        with captured_output() as messages:
            try:
                interpreter = runtime.Interpreter.from_bytes(model, arena_size=int(line))
            except Exception as exc:  # noqa: BLE001 - the wrapper raises several types
                interpreter = None
                why = _micro_failure(messages() or f"{type(exc).__name__}: {exc}")
        if interpreter is None:
            stdout.write(f"failed {why}\n".encode())
            stdout.flush()
            continue
        stdout.write(b"allocated\n")
        stdout.flush()
        with captured_output() as messages:
            for index in range(_count(interpreter.get_input_details)):
                details = interpreter.get_input_details(index)
                interpreter.set_input(np.zeros(details["shape"], details["dtype"]), index)
            interpreter.invoke()
            interpreter.print_allocations()
            recorded = re.search(r"Arena allocation total (\d+) bytes", messages())
        stdout.write(b"ran %d\n" % (int(recorded.group(1)) if recorded else 0))
        stdout.flush()


def _signal_name(status: int) -> str:
    if status < 0:
        try:
            return signal.Signals(-status).name
        except ValueError:
            return f"signal {-status}"
    return f"exit status {status}"
