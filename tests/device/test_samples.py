"""Windows from the program that owns the sensor (the agent's Python API and its sample socket) go where
INFER requests go: counters, the sample log, the OOD buffer, events; verdicts equal host scoring."""

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgefp import data
from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError
from edgefp.firmware_host.device.agent import MAX_CLIENTS, Agent, serving
from edgefp.firmware_host.device.samples import SampleClient, SampleServer
from edgefp.firmware_host.link import client
from tests.cli.test_cli import edgefp

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sensors.md"


@pytest.fixture(scope="module")
def bundle(digits_bundle):
    return Bundle.load(digits_bundle[1])


@pytest.fixture
def agent(tmp_path, bundle):
    agent = Agent(str(tmp_path / "agent"), "pi")
    with serving(agent, "pty") as url, client.open_device(url) as device:
        client.flash(device, bundle.archive_bytes())
    return agent


def docs_client(address: str):
    """The client code of docs/sensors.md, run as written (its socket path replaced by ``address``)."""
    code = re.search(r"```python\n(# the sensor side.*?)```", DOCS.read_text(), re.S).group(1)
    namespace = {}
    exec(code.replace('"/run/edgefp/samples.sock"', repr(address)), namespace)  # noqa: S102
    return namespace["classify"]


def test_windows_from_the_sensor_program_count_like_infer_requests(agent, bundle):
    x = np.concatenate([data.load("digits:test:0-4").x[:20], data.load("digits:test:5-9").x[:20]])
    host = bundle.score(x, "litert")
    with serving(agent, "tcp") as url, client.open_device(url) as device:
        client.subscribe(device)
        entries = [agent.classify(window.ravel()) for window in x]  # flat windows are taken too
        events = [device.read_event(2.0) for _ in x]
        counters = client.counters(device)
        pulled = client.pull_ood(device)
    assert [e.result.pred for e in entries] == np.searchsorted(bundle.label_values, host.pred).tolist()
    assert [np.float32(e.result.score) for e in entries] == host.ood_score.astype(np.float32).tolist()
    assert [e.input for e in events] == list(range(1, 41)) and [e.ood for e in events] == host.is_ood.tolist()
    assert (counters["inputs"], counters["ood"]) == (40, int(host.is_ood.sum()))
    assert [p["input"] for p in pulled] == (np.flatnonzero(host.is_ood)[::-1] + 1)[:32].tolist()
    np.testing.assert_array_equal(pulled[0]["x"], bundle.quantize(x)[np.flatnonzero(host.is_ood)[-1]])


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_the_sample_socket_answers_each_window_with_a_verdict(agent, bundle, tmp_path, kind):
    address = str(tmp_path / "samples.sock") if kind == "unix" else "127.0.0.1:0"
    x = np.concatenate([data.load("digits:test:0-4").x[:5], data.load("digits:test:5-9").x[:5]])
    host = bundle.score(x, "litert")
    with SampleServer(agent, address) as server:
        if kind == "unix":
            classify = docs_client(server.address)  # one connection for all windows, as the docs' client keeps
            answers = [classify(window) for window in x]
        else:
            with SampleClient(server.address) as sensor:
                answers = [sensor.classify(window) for window in x]
    assert [a["input"] for a in answers] == list(range(1, 11))
    assert [a["pred"] for a in answers] == host.pred.tolist() and [a["label"] for a in answers] == list(
        map(str, host.pred)
    )
    assert [a["ood"] for a in answers] == host.is_ood.tolist()
    np.testing.assert_array_equal([a["score"] for a in answers], host.ood_score)
    names = [layer.name for layer in bundle.manifest.layers]
    for answer, score in zip(answers, host.ood_score):
        assert list(answer["evidence"]) == names
        assert sum(answer["evidence"].values()) / len(names) == pytest.approx(score, abs=1e-3)
    assert agent.counters.inputs == 10 and not (tmp_path / "samples.sock").exists()


def test_refused_windows_are_answered_and_not_counted(tmp_path, agent):
    with SampleServer(agent, str(tmp_path / "s.sock")) as server, SampleClient(server.address) as sensor:
        with pytest.raises(EdgefpError, match="a window of 10 values; the model takes"):
            sensor.classify(np.zeros(10))
        with pytest.raises(EdgefpError, match="NaN or inf"):
            sensor.classify(np.full(64, np.nan))
        assert sensor.classify(np.zeros(64))["input"] == 1  # the connection still serves
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(server.address)
        raw.sendall(b"\xff\xff\xff\xff")
        assert "send 1 to" in json.loads(raw.makefile().readline())["error"] and raw.recv(10) == b""
        raw.close()
    assert agent.counters.inputs == 1
    with pytest.raises(EdgefpError, match="programs on this machine"):
        SampleServer(agent, "0.0.0.0:7000")
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgefpError, match="is not a socket"):
        SampleServer(agent, str(tmp_path / "file"))
    empty = Agent(str(tmp_path / "empty"), "pi")
    with SampleServer(empty, str(tmp_path / "e.sock")) as server, SampleClient(server.address) as sensor:
        with pytest.raises(EdgefpError, match="no bundle is active"):
            sensor.classify(np.zeros(64))


def test_connections_beyond_the_cap_are_closed_and_a_freed_place_serves_again(tmp_path, agent):
    with SampleServer(agent, str(tmp_path / "s.sock")) as server:
        sensors = [SampleClient(server.address) for _ in range(MAX_CLIENTS)]
        assert all(sensor.classify(np.zeros(64))["input"] for sensor in sensors)
        with SampleClient(server.address) as extra, pytest.raises(EdgefpError, match="closed the sample socket"):
            extra.classify(np.zeros(64))
        sensors.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the closed connection's place is given back once its thread ends
            try:
                with SampleClient(server.address) as again:
                    assert again.classify(np.zeros(64))["input"] > MAX_CLIENTS
                break
            except EdgefpError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        for sensor in sensors:
            sensor.close()


def test_a_simulated_board_takes_windows_on_its_sample_socket(tmp_path, digits_bundle):
    sock = tmp_path / "samples.sock"
    args = [sys.executable, "-m", "edgefp", "sim", "--profile", "pi", "--samples", str(sock)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert process.stderr.readline().strip() == f"samples: {sock}"
        assert edgefp("flash", digits_bundle[1], "--port", url).returncode == 0
        with SampleClient(str(sock)) as sensor:
            answer = sensor.classify(data.load("digits:test:5-9").x[0])
        assert answer["input"] == 1
        assert json.loads(edgefp("info", "--port", url, "--json").stdout)["active"]["name"] == "digits04"
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGTERM and not sock.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_an_agent_told_to_end_removes_its_sample_socket(tmp_path, signum):
    sock = tmp_path / "samples.sock"
    args = ["agent", "--data-dir", str(tmp_path / "slots"), "--tcp", "127.0.0.1:0", "--samples", str(sock)]
    process = subprocess.Popen([sys.executable, "-m", "edgefp", *args], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr.readline().strip() == f"samples: {sock}" and sock.exists()
        assert process.stderr.readline().startswith("socket://127.0.0.1:")
    finally:
        process.send_signal(signum)
        process.wait(timeout=10)
    assert process.returncode == -signum and not sock.exists()
