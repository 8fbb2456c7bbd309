"""Timing a bundle's model, and comparing timings: one JSON schema for host and device benchmarks.

Warm-ups are excluded; every timed invoke is kept (``samples_us``) so that reports can draw the
distribution. No TensorFlow here.
"""

from __future__ import annotations

import json
import platform
import time

import numpy as np

from edgefp.errors import EdgefpError
from edgefp.fsutil import check_file_output, read_json, write_file_atomic
from edgefp.limits import MAX_INVOKES

SCHEMA = "edgefp.bench"
SCHEMA_VERSION = 1
MAX_RESULT_BYTES = 64 << 20  # a result holds every timed latency: 100,000 of them take about 2 MB
# Numbers `compare` puts side by side, with whether a larger value is better.
COMPARED = {
    "init_ms": False,
    "first_inference_us": False,
    "latency_us.mean": False,
    "latency_us.p50": False,
    "latency_us.p90": False,
    "latency_us.p99": False,
    "throughput_per_s": True,
    "model_bytes": False,
    "arena_bytes": False,
}


def summarize(
    samples_us,
    *,
    target: dict,
    warmup: int,
    init_ms: float,
    first_inference_us: float,
    model_bytes: int,
    arena_bytes: int | None,
) -> dict:
    """A bench result of the common schema from timed latencies (microseconds)."""
    samples = np.asarray(samples_us, dtype=np.float64)
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "target": target,
        "runs": len(samples),
        "warmup": warmup,
        "init_ms": init_ms,
        "first_inference_us": first_inference_us,
        "latency_us": {
            "mean": float(samples.mean()),
            "std": float(samples.std()),
            "p50": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "min": float(samples.min()),
            "max": float(samples.max()),
        },
        "throughput_per_s": float(1e6 / samples.mean()),
        "model_bytes": model_bytes,
        "arena_bytes": arena_bytes,
        "samples_us": [float(v) for v in samples],
    }


class OverLimit(EdgefpError):
    """A benchmark that would run past its time limit."""


def bench_bundle(
    bundle, runtime: str = "litert", runs: int = 200, warmup: int = 20, seed: int = 0, time_limit_s=None
) -> dict:
    """Time the bundle's model on this machine: interpreter start-up, first invoke, then ``runs``
    invokes after ``warmup`` untimed ones, on a fixed random input (int8, or float32 for a model that
    takes floats). With ``time_limit_s``, a benchmark still running after that many seconds stops with
    OverLimit."""
    if runs < 1 or warmup < 0 or runs + warmup > MAX_INVOKES:
        raise EdgefpError(
            f"runs must be at least 1, warm-ups at least 0 and both together at most {MAX_INVOKES:,}; "
            f"got {runs} and {warmup}"
        )
    shape, rng = bundle.manifest.input.shape, np.random.default_rng(seed)
    if bundle.manifest.input.dtype == "float32":  # a wrapped model with a float input
        sample = rng.standard_normal(shape).astype(np.float32)
    else:
        sample = rng.integers(-128, 128, size=shape, dtype=np.int8)
    start = time.perf_counter_ns()
    interpreter = bundle.interpreter(runtime)
    init_ms = (time.perf_counter_ns() - start) / 1e6
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    first = _timed(interpreter, sample)
    samples = []
    for i in range(warmup + runs):
        if deadline is not None and time.monotonic() > deadline:
            raise OverLimit(
                f"the benchmark ran past its {time_limit_s:g}-s limit after {i} of {warmup + runs} invokes; "
                "ask for fewer runs"
            )
        latency = _timed(interpreter, sample)
        if i >= warmup:
            samples.append(latency)
    target = {
        "kind": "host",
        "runtime": interpreter.name,
        "bundle": bundle.manifest.name,
        "label": f"{bundle.manifest.name} on {interpreter.name}, {platform.machine()} host",
    }
    arena = bundle.manifest.tflm_arena_bytes if interpreter.name == "tflm" else None
    return summarize(
        samples,
        target=target,
        warmup=warmup,
        init_ms=init_ms,
        first_inference_us=first,
        model_bytes=bundle.manifest.flash_bytes,
        arena_bytes=arena,
    )


def _timed(interpreter, sample) -> float:
    start = time.perf_counter_ns()
    interpreter.invoke(sample)
    return (time.perf_counter_ns() - start) / 1e3


def load(path: str) -> dict:
    """A bench result file, checked."""
    missing = "write one with 'edgefp bench BUNDLE --out FILE'"
    result = read_json(path, "bench file", max_bytes=MAX_RESULT_BYTES, missing=missing)
    if result.get("schema") != SCHEMA or result.get("version") != SCHEMA_VERSION:
        raise EdgefpError(f"{path}: not an {SCHEMA} v{SCHEMA_VERSION} result")
    return result


def is_result(path: str) -> bool:
    """Whether ``path`` holds a bench result (what ``--force`` may replace)."""
    try:
        load(path)
    except EdgefpError:
        return False
    return True


def save(result: dict, path: str, *, force: bool = False) -> None:
    """Write a bench result as JSON (all at once); an existing file is replaced only with ``force``, and
    only when it is a bench result."""
    path = check_file_output(path, force=force, written_by_edgefp=is_result, kind="bench result")
    write_file_atomic(path, json.dumps(result, indent=1).encode())


def _lookup(result: dict, key: str):
    value = result
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def compare(a: dict, b: dict) -> list[dict]:
    """Rows of (metric, a, b, b/a, whether b is better) for the numbers both results have."""
    rows = []
    for key, higher_is_better in COMPARED.items():
        first, second = _lookup(a, key), _lookup(b, key)
        if first is None or second is None:
            continue
        ratio = second / first if first else None
        better = None if ratio is None or ratio == 1 else (ratio > 1) == higher_is_better
        rows.append({"metric": key, "a": first, "b": second, "ratio": ratio, "b_better": better})
    return rows
