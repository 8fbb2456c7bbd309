"""Shared by the benchmark scripts: where results go and what is recorded with them."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from importlib import metadata

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def environment() -> dict:
    versions = {}
    for package in ("edgefp", "numpy", "tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "tflite-micro"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "versions": versions,
    }


def save(name: str, results: dict, markdown: str) -> None:
    """Write ``NAME.json`` (with the environment) and ``NAME.md`` into ``results/`` (or the folder
    ``EDGEFP_BENCH_RESULTS`` names), and print the table."""
    folder = os.environ.get("EDGEFP_BENCH_RESULTS", RESULTS)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.json"), "w") as handle:
        json.dump({"environment": environment(), **results}, handle, indent=1)
    with open(os.path.join(folder, f"{name}.md"), "w") as handle:
        handle.write(markdown)
    print(markdown)
    print(f"saved {os.path.join(folder, name)}.json and .md")
