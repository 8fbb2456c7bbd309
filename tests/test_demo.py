"""`edgefp demo`, the README's first command, end to end through the command line."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.heavy  # the demo trains, in a child process


def test_demo_runs_end_to_end_and_the_device_answers_as_the_host(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "edgefp", "demo", "--out", str(out), "--json"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    device = report["device"]
    assert device["samples"] == 225 and device["identical_to_host"] == device["samples"]
    assert device["upload_efficiency"] > 0.95
    rows = {row["set"]: row for row in report["rows"]}
    assert rows["held-out 0-4"]["int8_accuracy"] > 0.95 and rows["0-4 invert"]["int8_auroc"] > 0.95
    assert os.path.exists(report["report"])
