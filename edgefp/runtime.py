"""One way to run a bundle's int8 model, whatever runs it: LiteRT on Linux devices (with the Edge TPU
delegate on a Coral when present) or TFLite Micro, the interpreter microcontrollers run.

LiteRT comes from ``ai_edge_litert``, else ``tflite_runtime`` (old Raspberry Pi images), else
``tensorflow.lite``. Nothing here imports TensorFlow unless both others are missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile

import numpy as np

from edgefp.errors import EdgefpError

RUNTIMES = ("litert", "tflm", "edgetpu")
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
                print(
                    f"edgefp: warning: Edge TPU delegate unavailable ({library}: {exc}); running on the CPU. "
                    "Install the Edge TPU runtime (libedgetpu1-std) and plug in the accelerator to use it.",
                    file=sys.stderr,
                )
        # Without the default XNNPACK delegate: LiteRT's own int8 kernels, repeatable and closest to TFLite Micro.
        resolver = getattr(module, "OpResolverType", None)
        options = {"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES} if resolver else {}
        self._interpreter = module.Interpreter(
            model_content=model_bytes, experimental_delegates=delegates, num_threads=1, **options
        )
        self._interpreter.allocate_tensors()
        detail, outputs = self._interpreter.get_input_details()[0], self._interpreter.get_output_details()
        self._input, self._outputs = detail["index"], [output["index"] for output in outputs]
        self.input_spec = _spec(detail)
        self.output_specs = [_spec(output) for output in outputs]

    def invoke(self, sample: np.ndarray) -> list[np.ndarray]:
        """Run one quantised sample (no batch axis); return every output in the model's order."""
        self._interpreter.set_tensor(self._input, sample[None])
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(index)[0] for index in self._outputs]

    def ops(self) -> list[str]:
        return sorted({op["op_name"] for op in self._interpreter._get_ops_details()} - {"DELEGATE"})


class TFLiteMicro:
    """The TFLite Micro interpreter: the kernels a microcontroller runs, in a fixed tensor arena."""

    name = "tflm"

    def __init__(self, model_bytes: bytes, arena_bytes: int | None = None):
        runtime = _tflm_runtime()
        with captured_output() as messages:
            try:
                self._interpreter = runtime.Interpreter.from_bytes(model_bytes, arena_size=arena_bytes)
            except Exception:  # noqa: BLE001 - the wrapper raises RuntimeError, struct.error, ValueError...
                raise EdgefpError(f"TFLite Micro cannot run the model: {_micro_failure(messages())}") from None
            self.input_spec = _spec(self._interpreter.get_input_details(0))
            self.output_specs = []
            while (detail := self._output_details(len(self.output_specs))) is not None:
                self.output_specs.append(_spec(detail))
            self._n_outputs = len(self.output_specs)

    def _output_details(self, index: int) -> dict | None:
        try:
            return self._interpreter.get_output_details(index)
        except IndexError:
            return None

    def invoke(self, sample: np.ndarray) -> list[np.ndarray]:
        """Run one quantised sample (no batch axis); return every output in the model's order."""
        self._interpreter.set_input(sample[None], 0)
        self._interpreter.invoke()
        return [self._interpreter.get_output(i)[0] for i in range(self._n_outputs)]


def _spec(detail: dict) -> tuple[tuple[int, ...], type]:
    """(shape without the batch axis, dtype) of an interpreter's tensor details."""
    return tuple(int(n) for n in detail["shape"][1:]), detail["dtype"]


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


def _micro_failure(log: str) -> str:
    """The operator TFLite Micro failed on, from its log, or its last message."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        if "Didn't find op for builtin opcode" in line or "failed to prepare" in line or "Unsupported" in line:
            return line
    return lines[-1] if lines else "unknown failure"


def open_runtime(model_bytes: bytes, runtime: str = "litert", *, arena_bytes: int | None = None):
    """An interpreter for ``model_bytes``: ``litert``, ``tflm`` or ``edgetpu`` (LiteRT with the delegate)."""
    if runtime == "tflm":
        return TFLiteMicro(model_bytes, arena_bytes)
    if runtime in ("litert", "edgetpu"):
        return LiteRT(model_bytes, edgetpu=runtime == "edgetpu")
    raise EdgefpError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")


def tflm_arena_bytes(model_bytes: bytes) -> int:
    """The smallest tensor arena (to 16 bytes) in which TFLite Micro allocates and runs the model."""
    runtime = _tflm_runtime()

    def fits(size: int) -> bool:
        with captured_output():
            try:
                runtime.Interpreter.from_bytes(model_bytes, arena_size=size)
            except RuntimeError:
                return False
        return True

    high = max(1024, len(model_bytes) * 10)
    while not fits(high):
        high *= 2
        if high > 1 << 30:
            raise EdgefpError("TFLite Micro cannot allocate the model in any arena up to 1 GiB")
    low = 16
    while high - low > 16:
        middle = (low + high) // 32 * 16
        if fits(middle):
            high = middle
        else:
            low = middle
    return high
