"""Host and agent end to end over a real pty and TCP: flash, infer (exactly host scoring), faults, restarts."""

import contextlib
import dataclasses
import hashlib
import os
import time

import numpy as np
import pytest
import serial

from edgefp import data
from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError
from edgefp.firmware_host.boards import Board
from edgefp.firmware_host.device import agent as agent_module
from edgefp.firmware_host.device.agent import Agent, listen_tcp, serving
from edgefp.firmware_host.link import client, protocol, transport
from edgefp.firmware_host.link.client import DeviceError
from edgefp.firmware_host.link.protocol import Err, Msg
from tests.conftest import KEY, check_error_codes, upload


@pytest.fixture(scope="module")
def archives(digits_bundle, tmp_path_factory):
    """Two bundles as archive bytes: digits04, and the same model renamed (another hash)."""
    _, bundle_dir = digits_bundle
    out = tmp_path_factory.mktemp("archives")
    bundle = Bundle.load(bundle_dir)
    first = bundle.write(str(out / "digits04.efp"))
    bundle.manifest = dataclasses.replace(bundle.manifest, name="digits04b")
    second = bundle.write(str(out / "digits04b.efp"))
    return [open(path, "rb").read() for path in (first, second)]


@pytest.fixture(scope="module")
def samples():
    return data.load("digits:test").x[:40]


@contextlib.contextmanager
def device_on(agent, kind="pty", **options):
    with serving(agent, kind) as url, client.open_device(url, timeout=0.5, **options) as device:
        yield device


def test_hello_reports_board_and_empty_slots(tmp_path):
    with device_on(Agent(str(tmp_path), "nrf52840")) as device:
        info = client.info(device)
    assert (info["board"], info["runtime"], info["flash_bytes"], info["ram_bytes"]) == (
        "nrf52840",
        "tflm",
        1 << 20,
        256 << 10,
    )
    assert info["protocol"] == protocol.VERSION and info["active"] is None and info["max_frame"] == 4096
    assert [slot["state"] for slot in info["slots"]] == ["empty", "empty"]


@pytest.mark.parametrize("kind, board", [("pty", "pi"), ("tcp", "nrf52840")])
def test_flash_and_infer_equal_host_scoring(tmp_path, archives, samples, digits_bundle, kind, board):
    agent = Agent(str(tmp_path), board)
    with device_on(agent, kind) as device:
        result = client.flash(device, archives[0])
        assert result["uploaded"] and not result["skipped"]
        assert result["bytes"] / result["wire_bytes"] >= 0.95
        assert device.info.active.name == "digits04"
        assert client.flash(device, archives[0])["skipped"]
        scores, latencies = client.infer_samples(device, samples)
        one = client.infer(device, Bundle.load(digits_bundle[1]).quantize(samples[:1])[0])
        counters = client.counters(device)
    host = Bundle.load(digits_bundle[1]).score(samples, agent.board.runtime)
    for name in ("pred", "probs", "layer_errors", "ood_score", "is_ood"):
        np.testing.assert_array_equal(getattr(scores, name), getattr(host, name), err_msg=name)
    assert one.score == np.float32(host.ood_score[0]) and one.ood == host.is_ood[0]
    assert (latencies > 0).all()
    assert counters["inputs"] == len(samples) + 1 and counters["ood"] == host.is_ood.sum() + host.is_ood[0]
    assert sorted(os.listdir(tmp_path)) == ["active", "slot0.efp"]


def test_faulty_link_still_gives_exact_results(tmp_path, archives, samples, digits_bundle):
    agent = Agent(str(tmp_path), "pi")
    with serving(agent) as url:
        port = transport.FaultyPort(serial.serial_for_url(url), rate=0.1, seed=1)
        with client.Device(port, url=url, timeout=0.2, retries=20) as device:
            client.handshake(device)
            client.flash(device, archives[0])
            scores, _ = client.infer_samples(device, samples)
            counters = client.counters(device)
    assert port.faults > 5 and device.resent > 0
    host = Bundle.load(digits_bundle[1]).score(samples, "litert")
    np.testing.assert_array_equal(scores.layer_errors, host.layer_errors)
    np.testing.assert_array_equal(scores.pred, host.pred)
    assert counters["inputs"] == len(samples)  # retried requests were answered again, not run again


def test_interrupted_flash_keeps_the_previous_bundle(tmp_path, archives):
    def interrupt(done, total):
        if done > total // 2:
            raise KeyboardInterrupt

    with device_on(Agent(str(tmp_path), "pi")) as device:
        client.flash(device, archives[0])
        with pytest.raises(KeyboardInterrupt):
            client.flash(device, archives[1], progress=interrupt)
        assert [slot.state for slot in client.hello(device).slots] == [protocol.SlotState.ACTIVE, 1]
    assert any(name.endswith(".partial") for name in os.listdir(tmp_path))
    with device_on(Agent(str(tmp_path), "pi")) as device:  # the agent restarts
        assert device.info.active.name == "digits04"
        assert not any(name.endswith(".partial") for name in os.listdir(tmp_path))
        assert client.flash(device, archives[1])["uploaded"]
        assert device.info.active.name == "digits04b"
        again = client.flash(device, archives[0])  # still verified in the other slot: activated, not uploaded
        assert not again["uploaded"] and device.info.active.name == "digits04"
    with device_on(Agent(str(tmp_path), "pi")) as device:
        assert device.info.active.name == "digits04"


def test_bundle_too_big_for_the_board_is_refused_saying_by_how_much(tmp_path, archives, digits_bundle):
    manifest = digits_bundle[0]  # a board a little short of what the bundle needs, on both counts
    tiny = Board("tiny", "a small test board", "tflm", manifest.flash_bytes - 1000, manifest.tflm_arena_bytes - 700)
    with device_on(Agent(str(tmp_path), tiny)) as device:
        with pytest.raises(DeviceError) as refused:
            client.flash(device, archives[0])
        assert refused.value.code == Err.DOES_NOT_FIT
        assert "needs 1000 bytes more flash than tiny" in str(refused.value)
        assert "needs 700 bytes more RAM" in str(refused.value)
        assert client.hello(device).active is None
    assert os.listdir(tmp_path) == []


def test_bad_requests_get_error_codes(tmp_path, archives):
    with device_on(Agent(str(tmp_path), "pi")) as device:
        check_error_codes(device, archives[0], (8, 8, 1))


def test_hash_mismatch_and_host_names_never_touch_the_disk(tmp_path, archives):
    with device_on(Agent(str(tmp_path), "pi")) as device:
        with pytest.raises(DeviceError, match="HASH_MISMATCH"):
            upload(device, archives[0], bytes(32), "../../escape")
        assert os.listdir(tmp_path) == [] and not os.path.exists(tmp_path.parent / "escape")
        shas = [hashlib.sha256(archive).digest() for archive in archives]
        assert [upload(device, archive, sha) for archive, sha in zip(archives, shas)] == [0, 1]
        assert upload(device, archives[0], shas[0]) == 0  # no slot empty, none active: the first
        device.request(Msg.ACTIVATE, shas[1])
        assert upload(device, archives[0], shas[0]) == 0
        assert client.hello(device).active.name == "digits04b"
    assert sorted(os.listdir(tmp_path)) == ["active", "slot0.efp", "slot1.efp"]


def test_events_counters_pull_ood_and_bench(tmp_path, archives, samples, digits_bundle):
    bundle = Bundle.load(digits_bundle[1])
    with device_on(Agent(str(tmp_path), "pi")) as device:
        client.flash(device, archives[0])
        client.subscribe(device)
        scores, _ = client.infer_samples(device, samples[:10])
        events = [device.read_event(1.0) for _ in range(10)]
        client.subscribe(device, False)
        ood = client.pull_ood(device)
        result = client.bench(device, runs=30, warmup=3)
        client.reset(device)
        assert client.counters(device)["inputs"] == 0
    assert [event.input for event in events] == list(range(1, 11))
    assert [event.ood for event in events] == scores.is_ood.tolist()
    flagged = np.flatnonzero(scores.is_ood)[::-1]
    assert [sample["input"] for sample in ood] == (flagged + 1).tolist()
    x_q = bundle.quantize(samples[:10])
    for sample, index in zip(ood, flagged):
        np.testing.assert_array_equal(sample["x"], x_q[index])
    assert result["schema"] == "edgefp.bench" and result["runs"] == 30 and len(result["samples_us"]) == 30
    assert result["target"]["kind"] == "device" and result["model_bytes"] == bundle.manifest.flash_bytes


def test_tcp_beyond_loopback_needs_a_key_and_the_key_is_checked(tmp_path):
    with pytest.raises(EdgefpError, match="shared key"):
        listen_tcp(Agent(str(tmp_path), "pi"), host="0.0.0.0")
    with pytest.raises(EdgefpError, match="at least 16"):
        Agent(str(tmp_path), "pi", key=b"secret")
    agent = Agent(str(tmp_path), "pi", key=KEY)
    with serving(agent, "tcp") as url:
        with pytest.raises(EdgefpError, match="requires a shared key"):
            client.open_device(url, timeout=0.5)
        with pytest.raises(DeviceError, match="AUTH_FAILED: wrong key"):
            client.open_device(url, timeout=0.5, key=KEY[::-1])
        with pytest.raises(DeviceError, match="too many wrong keys"):  # even the right key waits a moment
            client.open_device(url, timeout=0.5, key=KEY)
        time.sleep(agent_module.AUTH_DELAY_S + 0.1)
        port = serial.serial_for_url(url)
        with client.Device(port, url=url, timeout=0.5) as device:
            with pytest.raises(EdgefpError, match="requires a shared key"):
                client.hello(device)  # HELLO went through, AUTH was not sent
            with pytest.raises(DeviceError, match="AUTH_REQUIRED"):
                client.counters(device)
        with client.open_device(url, timeout=0.5, key=KEY) as device:
            assert client.counters(device)["inputs"] == 0


def test_open_device_errors_are_one_clear_line(tmp_path):
    with pytest.raises(EdgefpError, match="cannot open /nonexistent/tty: .*edgefp devices"):
        client.open_device("/nonexistent/tty")
    port, path = transport.open_pty()  # nothing answers there
    try:
        with pytest.raises(EdgefpError, match="no answer to HELLO after 2 tries"):
            client.open_device(path, timeout=0.1, retries=1)
    finally:
        port.close()


def test_host_killed_mid_upload_then_the_next_flash_succeeds(tmp_path, archives):
    def interrupt(done, total):
        if done > total // 3:
            raise KeyboardInterrupt

    agent = Agent(str(tmp_path), "pi")
    with device_on(agent) as device:
        client.flash(device, archives[0])
        with pytest.raises(KeyboardInterrupt):
            client.flash(device, archives[1], progress=interrupt)
    with device_on(agent) as device:  # a new host connection, the same running device
        assert device.info.active.name == "digits04"
        assert client.flash(device, archives[1])["uploaded"] and device.info.active.name == "digits04b"
