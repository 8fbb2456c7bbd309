"""Each benchmark runs end to end in its quick mode, so that the suite cannot rot."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
QEMU = all(shutil.which(tool) for tool in ("make", "arm-none-eabi-gcc", "qemu-system-arm"))


@pytest.mark.parametrize(
    "name, keys",
    [
        ("ood_quality", ["summary", "runs"]),
        ("int8", ["timing", "results"]),
        ("link", []),
        ("selection", []),
        pytest.param(
            "firmware", ["sizes", "templates", "upload"], marks=pytest.mark.skipif(not QEMU, reason="no QEMU")
        ),
    ],
)
def test_benchmark_quick_mode_writes_its_results(name, keys, tmp_path):
    env = {**os.environ, "EDGEFP_BENCH_RESULTS": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / f"{name}_quick.json") as handle:
        saved = json.load(handle)
    assert all(key in saved for key in keys) and saved["environment"]["versions"]
    assert (tmp_path / f"{name}_quick.md").read_text().count("|") > 10
