"""The device's sample log (READ_LOG) and `edgefp record` against an agent over real sockets: every input
recorded once, in order, across a cut link and a killed recorder; raw samples and scores exact."""

import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edgefp import data
from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError
from edgefp.firmware_host.device.agent import Agent, serving
from edgefp.firmware_host.link import client, protocol
from edgefp.firmware_host.link.protocol import Err, Msg
from edgefp.firmware_host.link.record import Recording, record
from tests.cli.test_cli import edgefp


@pytest.fixture(scope="module")
def bundle(digits_bundle):
    return Bundle.load(digits_bundle[1])


@pytest.fixture(scope="module")
def x_mixed():
    """Known digits and unseen ones (5-9) interleaved: about a quarter flagged."""
    known, unseen = data.load("digits:test:0-4").x[:60], data.load("digits:test:5-9").x[:60]
    return np.stack([known, unseen], axis=1).reshape(-1, 8, 8, 1)


def active_agent(path, bundle, **options) -> Agent:
    agent = Agent(str(path), "pi", **options)
    with serving(agent, "pty") as url, client.open_device(url) as device:
        client.flash(device, bundle.archive_bytes())
    return agent


def assert_recorded_exactly(path, x, bundle, inputs):
    """The file holds the inputs numbered ``inputs``, once each, in order, with their raw samples and the
    scores host scoring gives them."""
    with np.load(path) as got:
        np.testing.assert_array_equal(got["input"], inputs)
        expected = x[np.asarray(inputs) - 1]
        np.testing.assert_array_equal(got["x"], expected)
        host = bundle.score(expected, "litert")
        for key in ("pred", "probs", "ood_score", "is_ood", "layer_errors"):
            np.testing.assert_array_equal(got[key], getattr(host, key).astype(got[key].dtype), err_msg=key)
        assert got["raw"].all() and (np.diff(got["timestamp_ms"]) >= 0).all()
    loaded = data.load(str(path))  # a data file the trainer reads
    assert loaded.x.shape == (len(inputs), 8, 8, 1) and loaded.y is None


def test_the_log_is_read_by_number_in_pieces_and_by_verdict(tmp_path, bundle, x_mixed):
    agent = active_agent(tmp_path / "agent", bundle, log_capacity=50)
    for window in x_mixed[:80]:
        agent.classify(window)
    flagged = bundle.score(x_mixed[:80], "litert").is_ood
    with serving(agent, "tcp") as url, client.open_device(url) as device:
        page = client.read_log(device, 0)
        assert (page.first, page.seen, page.capacity) == (31, 80, 50)
        assert page.entry.input == 31 and page.entry.kind == protocol.DataKind.RAW
        np.testing.assert_array_equal(np.frombuffer(page.entry.data, "<f4").reshape(8, 8, 1), x_mixed[30])
        assert client.read_log(device, 80).entry is None
        ood = client.read_log(device, 40, ood_only=True).entry
        assert ood.input == 41 + int(np.argmax(flagged[40:])) and ood.result.ood
        x_q = bundle.quantize(x_mixed[:1])[0]
        client.infer(device, x_q)  # an INFER request is logged too, as its int8 input
        entry = client.read_log(device, 80).entry
        assert entry.input == 81 and entry.kind == protocol.DataKind.INT8 and entry.data == x_q.tobytes()
        session = page.session
        client.reset(device)
        page = client.read_log(device, 0)
        assert page.session != session and (page.first, page.seen, page.entry) == (1, 0, None)
        with pytest.raises(client.DeviceError) as refused:
            device.request(Msg.READ_LOG, struct.pack("<IBI", 0, 2, 0))
        assert refused.value.code == Err.OUT_OF_RANGE


def test_a_window_larger_than_a_frame_is_read_in_pieces(tmp_path, motions_bundle):
    """A 100x6 float window (2,400 bytes) through 1,024-byte frames: three pieces, put together exactly."""
    window = data.load("basic_motions:test").x[3]
    agent = active_agent(tmp_path / "agent", Bundle.load(motions_bundle), max_frame=1024)
    agent.classify(window)
    with serving(agent, "tcp") as url, client.open_device(url) as device:
        entry = client.read_log(device, 0).entry
    np.testing.assert_array_equal(np.frombuffer(entry.data, "<f4").reshape(window.shape), window)


def test_record_survives_a_cut_link_without_losing_or_repeating_a_sample(tmp_path, bundle, x_mixed, caplog):
    caplog.set_level(logging.INFO, logger="edgefp")
    agent = active_agent(tmp_path / "agent", bundle)
    out, stop = tmp_path / "field.npz", threading.Event()

    def sensor():
        for window in x_mixed:
            if stop.wait(0.01):
                return
            agent.classify(window)

    with serving(agent, "tcp") as url:
        feeding = threading.Thread(target=sensor)
        feeding.start()
        result = {}
        recorder = threading.Thread(target=lambda: result.update(record(url, str(out), count=len(x_mixed))))
        recorder.start()
        while len(Recording.open(str(out))) < 20:
            time.sleep(0.05)
    time.sleep(0.3)  # the link is down while the sensor goes on
    with serving(agent, "tcp", int(url.rsplit(":", 1)[1])):
        recorder.join(60)
    stop.set()
    feeding.join()
    status = [entry.getMessage() for entry in caplog.records]
    assert any("lost" in text for text in status) and any("reconnected" in text for text in status)
    assert result["samples"] == len(x_mixed) and result["lost"] == 0
    assert_recorded_exactly(out, x_mixed, bundle, np.arange(1, len(x_mixed) + 1))


def test_a_killed_recorder_continues_where_its_file_ends(tmp_path, bundle, x_mixed):
    agent = active_agent(tmp_path / "agent", bundle)
    flagged = np.flatnonzero(bundle.score(x_mixed, "litert").is_ood) + 1

    def sense():
        for window in x_mixed:
            agent.classify(window)
            time.sleep(0.025)

    sensor = threading.Thread(target=sense)
    out = tmp_path / "ood.npz"
    with serving(agent, "tcp") as url:
        args = [sys.executable, "-m", "edgefp", "record", "--port", url, "--out", str(out), "--ood-only"]
        first = subprocess.Popen(args + ["--count", str(len(flagged))], stdout=subprocess.DEVNULL)
        sensor.start()
        while not out.exists() or len(Recording.open(str(out))) < 3:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert len(Recording.open(str(out))) < len(flagged)
        finished = edgefp(*args[3:], "--count", str(len(flagged)))
        assert finished.returncode == 0, finished.stderr
    sensor.join()
    assert f"{len(flagged)} samples in {out}" in finished.stdout
    assert_recorded_exactly(out, x_mixed, bundle, flagged)


def test_inputs_the_log_dropped_are_counted_and_a_new_session_starts_over(tmp_path, bundle, x_mixed):
    agent = active_agent(tmp_path / "agent", bundle, log_capacity=10)
    out = tmp_path / "all.npz"
    with serving(agent, "tcp") as url:
        for window in x_mixed[:15]:
            agent.classify(window)
        assert record(url, str(out), count=10)["lost"] == 0  # the oldest it holds: 6 to 15
        for window in x_mixed[15:40]:
            agent.classify(window)
        report = record(url, str(out), count=20)
        assert report["lost"] == 15 and report["recorded"] == 10  # 16 to 30 were overwritten
        with client.open_device(url) as device:
            client.reset(device)
        for window in x_mixed[:5]:
            agent.classify(window)
        assert record(url, str(out), count=25)["lost"] == 0
    with np.load(out) as got:
        np.testing.assert_array_equal(got["input"], [*range(6, 16), *range(31, 41), *range(1, 6)])
        assert len(set(got["session"][:20])) == 1 and got["session"][20] != got["session"][0]
        assert int(got["lost"]) == 15
    with serving(agent, "tcp") as url:
        assert record(url, str(out), force=True, count=3)["lost"] == 0  # --force: the recording starts over
    with np.load(out) as got:
        np.testing.assert_array_equal(got["input"], [1, 2, 3])


def test_record_errors_are_one_clear_line(tmp_path, bundle):
    result = edgefp("record", "--port", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.npz"), "--count", "1")
    assert result.returncode == 2 and result.stderr.startswith("edgefp: error: cannot open")
    (tmp_path / "other.npz").write_bytes(b"not a recording")
    (tmp_path / "link.npz").symlink_to(tmp_path / "elsewhere.npz")
    for force in (False, True):  # another file is never continued nor replaced
        with pytest.raises(EdgefpError, match="not a recording written by edgefp"):
            Recording.open(str(tmp_path / "other.npz"), force=force)
        with pytest.raises(EdgefpError, match="symbolic link"):
            Recording.open(str(tmp_path / "link.npz"), force=force)
    assert (tmp_path / "other.npz").read_bytes() == b"not a recording"
    assert not os.path.exists(tmp_path / "x.npz")
