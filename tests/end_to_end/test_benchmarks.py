"""Each benchmark runs end to end in its quick mode, so that the suite cannot rot; where a quick mode still
repeats a code path (a second sensor set, classifier epochs), the options shrink it."""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.heavy  # the benchmarks train and build, in child processes

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
QEMU = all(shutil.which(tool) for tool in ("make", "arm-none-eabi-gcc", "qemu-system-arm"))


@pytest.mark.parametrize(
    "name, options, keys",
    [
        # an image set, a sensor set, and the attacks on both
        ("ood_quality", ["--sets", "digits,basic_motions", "--adversarial"], ["summary", "runs"]),
        ("int8", [], ["timing", "results"]),
        ("link", [], []),
        ("many_devices", [], ["boards"]),
        ("selection", ["--epochs", "5"], []),  # every path still runs; its goals are still met
        pytest.param(
            "firmware", [], ["sizes", "templates", "upload"], marks=pytest.mark.skipif(not QEMU, reason="no QEMU")
        ),
        pytest.param("signing", [], ["instructions_accept"], marks=pytest.mark.skipif(not QEMU, reason="no QEMU")),
    ],
)
def test_benchmark_quick_mode_writes_its_results(name, options, keys, tmp_path):
    env = {**os.environ, "EDGEFP_BENCH_RESULTS": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", *options],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stem = name + ("_adversarial" if "--adversarial" in options else "") + "_quick"
    with open(tmp_path / f"{stem}.json") as handle:
        saved = json.load(handle)
    assert all(key in saved for key in keys) and saved["environment"]["versions"]
    assert (tmp_path / f"{stem}.md").read_text().count("|") > 10
    assert "--adversarial" not in options or all("adversarial" in s for s in saved["summary"].values())
