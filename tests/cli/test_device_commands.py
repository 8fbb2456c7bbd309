"""The host commands against a simulated board, through the real command line and a real pty or socket."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from edgefp.bundle import Bundle
from tests.cli.test_cli import edgefp


@pytest.fixture(params=["pty", "tcp"])
def simulated_board(request):
    """`edgefp sim` running in the background; yields the URL it printed on its first line."""
    args = [sys.executable, "-m", "edgefp", "sim", "--profile", "nrf52840"] + (
        ["--tcp"] if request.param == "tcp" else []
    )
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("socket://127.0.0.1:" if request.param == "tcp" else "/dev/"), process.stderr.read()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_flash_infer_and_review_on_a_simulated_board(simulated_board, digits_bundle, tmp_path):
    _, bundle_dir = digits_bundle
    url = simulated_board
    info = json.loads(edgefp("info", "--port", url, "--json").stdout)
    assert info["board"] == "nrf52840" and info["runtime"] == "tflm" and info["active"] is None

    first = json.loads(edgefp("flash", bundle_dir, "--port", url, "--json").stdout)
    assert first["uploaded"] and first["efficiency"] >= 0.95
    assert json.loads(edgefp("flash", bundle_dir, "--port", url, "--json").stdout)["skipped"]

    device_file, host_file = tmp_path / "device.npz", tmp_path / "host.npz"
    result = edgefp("infer", "--port", url, "--data", "digits:test:0-4", "--out", str(device_file), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] > 0.95
    assert (
        edgefp(
            "score", bundle_dir, "--data", "digits:test:0-4", "--runtime", "tflm", "--out", str(host_file)
        ).returncode
        == 0
    )
    with np.load(device_file) as device, np.load(host_file) as host:
        for name in ("pred", "probs", "ood_score", "is_ood", "layer_errors"):
            np.testing.assert_array_equal(device[name], host[name])

    assert edgefp("infer", "--port", url, "--data", "digits:test:5-9").returncode == 0
    review = tmp_path / "review"
    pulled = json.loads(edgefp("pull-ood", "--port", url, "--out", str(review), "--json").stdout)
    with np.load(review / "ood.npz") as ood:
        assert pulled["samples"] == len(ood["ood_score"]) > 0
        assert (ood["ood_score"] > Bundle.load(bundle_dir).threshold).all()
    assert "already exists" in edgefp("pull-ood", "--port", url, "--out", str(review)).stderr
    assert edgefp("pull-ood", "--port", url, "--out", str(review), "--force").returncode == 0
    (review / "notes.txt").write_text("mine")
    assert "did not write (notes.txt)" in edgefp("pull-ood", "--port", url, "--out", str(review), "--force").stderr
    assert (review / "notes.txt").read_text() == "mine"

    timing = json.loads(edgefp("bench", "--port", url, "-n", "20", "--warmup", "2", "--json").stdout)
    assert timing["target"]["kind"] == "device" and timing["runs"] == 20 and timing["latency_us"]["p50"] > 0


def test_unreachable_device_is_one_clear_line(tmp_path):
    result = edgefp("info", "--port", str(tmp_path / "no-such-port"))
    assert result.returncode == 2 and result.stderr.startswith("edgefp: error: cannot open")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("link", ["pty", "tcp"])
def test_devices_and_info_import_nothing_heavy(link, tmp_path):
    """Listing ports and asking a device what it is need neither numpy nor an interpreter (an agent
    in this process answers; the command runs as the console does, with the exit it ends with)."""
    heavy = ("numpy", "tensorflow", "keras", "ai_edge_litert", "tflite_micro")
    code = (
        "import sys\nfrom edgefp.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as end:\n    code = end.code\n"
        f"print(code, [name for name in {heavy!r} if name in sys.modules])\n"
    )
    from edgefp.firmware_host.device.agent import Agent, serving

    with serving(Agent(str(tmp_path / "agent"), "pi"), link) as url:
        for args in (["devices", "--json"], ["info", "--port", url, "--json"]):
            result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
            assert result.stdout.strip().splitlines()[-1] == "0 []", result.stdout + result.stderr


def test_device_commands_do_not_import_tensorflow():
    code = "import sys; from edgefp.cli import main\ntry: main(['info', '--help'])\nexcept SystemExit: pass\n"
    code += (
        "import edgefp.firmware_host.link.client, edgefp.firmware_host.device.agent; print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert result.stdout.strip().endswith("False"), result.stderr


def test_monitor_reconnects_when_the_device_restarts(digits_bundle, tmp_path, caplog):
    import logging
    import threading

    from edgefp import data
    from edgefp.firmware_host.device.agent import Agent, serving
    from edgefp.firmware_host.link.client import flash, open_device
    from edgefp.firmware_host.link.monitor import follow

    _, bundle_dir = digits_bundle
    agent = Agent(str(tmp_path / "device"), "pi")
    x_q = Bundle.load(bundle_dir).quantize(data.load("digits:test:5-9").x[:40])
    events = []
    caplog.set_level(logging.INFO, logger="edgefp")
    with serving(agent, "tcp") as url:
        with open_device(url) as device:
            flash(device, Bundle.load(bundle_dir).archive_bytes())
        watcher = threading.Thread(target=follow, args=(url, events.append), kwargs={"count": 6, "duration": 30})
        watcher.start()
        while not events and watcher.is_alive():  # one reading at a time: most of the 6 events come after the restart
            agent.observe(x_q[0])
            watcher.join(0.05)
    # the device went away; it comes back on the same port, with its last good bundle
    restarted = Agent(str(tmp_path / "device"), "pi")
    with serving(restarted, "tcp", int(url.rsplit(":", 1)[1])):
        while watcher.is_alive():
            restarted.observe(x_q[len(events) % len(x_q)])
            watcher.join(0.05)
    status = [entry.getMessage() for entry in caplog.records]
    assert len(events) == 6 and any("lost" in s for s in status) and any("reconnected" in s for s in status)
    assert all(event["ood"] in (True, False) and event["latency_us"] >= 0 for event in events)


def test_simulated_sensor_drift_shows_in_the_monitor(digits_bundle):
    _, bundle_dir = digits_bundle
    args = [sys.executable, "-m", "edgefp", "sim", "--profile", "pi", "--feed", "digits:test:0-4", "--rate", "100"]
    process = subprocess.Popen(args + ["--drift-at", "40", "--drift", "invert"], stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert edgefp("flash", bundle_dir, "--port", url).returncode == 0
        result = edgefp("monitor", "--port", url, "--count", "120")
        events = [json.loads(line) for line in result.stdout.splitlines()]
    finally:
        process.terminate()
        process.wait(timeout=10)
    clean = [e["ood"] for e in events if e["input"] <= 40]
    drifted = [e["ood"] for e in events if 45 <= e["input"] <= 225]
    assert len(events) == 120 and drifted and np.mean(drifted) > 0.9
    assert not clean or np.mean(clean) < 0.3


def test_devices_lists_ports_as_json():
    result = edgefp("devices", "--json")
    assert result.returncode == 0
    for port in json.loads(result.stdout)["ports"]:
        assert set(port) >= {"port", "vid_pid", "serial_number", "description"}


@pytest.mark.parametrize("profile", ["nrf52840", "native"])
def test_a_terminated_sim_leaves_nothing_behind(digits_bundle, tmp_path, profile):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    args = [sys.executable, "-m", "edgefp", "sim", "--profile", profile]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(scratch)})
    try:
        url = process.stdout.readline().strip()
        assert edgefp("flash", digits_bundle[1], "--port", url).returncode == 0
        assert os.listdir(scratch)  # the slots (or the flash file) live there while it runs
    finally:
        process.terminate()
        assert process.wait(timeout=10) == -signal.SIGTERM  # cleaned up, then ended as the signal says
    assert os.listdir(scratch) == []
