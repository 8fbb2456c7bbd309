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

SCHEMA = "edgefp.bench"
SCHEMA_VERSION = 1
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


def bench_bundle(bundle, runtime: str = "litert", runs: int = 200, warmup: int = 20, seed: int = 0) -> dict:
    """Time the bundle's model on this machine: interpreter start-up, first invoke, then ``runs``
    invokes after ``warmup`` untimed ones, on a fixed random input (int8, or float32 for a model that
    takes floats)."""
    from edgefp.runtime import open_runtime

    if runs < 1 or warmup < 0:
        raise EdgefpError(f"runs must be at least 1 and warm-ups at least 0, got {runs} and {warmup}")
    shape, rng = bundle.manifest["input"]["shape"], np.random.default_rng(seed)
    if bundle.manifest["input"].get("dtype", "int8") == "float32":  # a wrapped model with a float input
        sample = rng.standard_normal(shape).astype(np.float32)
    else:
        sample = rng.integers(-128, 128, size=shape, dtype=np.int8)
    start = time.perf_counter_ns()
    interpreter = open_runtime(bundle.model_bytes, runtime, arena_bytes=bundle.manifest.get("tflm_arena_bytes"))
    init_ms = (time.perf_counter_ns() - start) / 1e6
    first = _timed(interpreter, sample)
    for _ in range(warmup):
        interpreter.invoke(sample)
    samples = [_timed(interpreter, sample) for _ in range(runs)]
    target = {
        "kind": "host",
        "runtime": interpreter.name,
        "bundle": bundle.manifest["name"],
        "label": f"{bundle.manifest['name']} on {interpreter.name}, {platform.machine()} host",
    }
    arena = bundle.manifest.get("tflm_arena_bytes") if interpreter.name == "tflm" else None
    return summarize(
        samples,
        target=target,
        warmup=warmup,
        init_ms=init_ms,
        first_inference_us=first,
        model_bytes=bundle.manifest["flash_bytes"],
        arena_bytes=arena,
    )


def _timed(interpreter, sample) -> float:
    start = time.perf_counter_ns()
    interpreter.invoke(sample)
    return (time.perf_counter_ns() - start) / 1e3


def load(path: str) -> dict:
    """A bench result file, checked."""
    try:
        with open(path) as handle:
            result = json.load(handle)
    except FileNotFoundError:
        raise EdgefpError(f"{path}: no such bench file; write one with 'edgefp bench BUNDLE --out FILE'") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgefpError(f"{path}: not a readable bench file ({exc})") from None
    if not isinstance(result, dict) or result.get("schema") != SCHEMA or result.get("version") != SCHEMA_VERSION:
        raise EdgefpError(f"{path}: not an {SCHEMA} v{SCHEMA_VERSION} result")
    return result


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
