"""The C firmware on its own sensor: windows of raw values the host drives over the sensor link (a socket
for the native build, the second UART under QEMU) are preprocessed, quantised and classified on the
chip byte for byte as host scoring does, counted, logged for READ_LOG, evented and recorded."""

import ctypes
import json
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from edgefp import data
from edgefp.bundle import Bundle
from edgefp.firmware_host.firmware.build import SOURCE
from edgefp.firmware_host.firmware.launch import can_emulate, start
from edgefp.firmware_host.link import client, protocol
from tests.cli.test_cli import edgefp

HAS_NATIVE = all(shutil.which(tool) for tool in ("gcc", "make"))
HAS_QEMU = HAS_NATIVE and can_emulate()
pytestmark = [pytest.mark.heavy, pytest.mark.skipif(not HAS_NATIVE, reason="building the firmware needs gcc and make")]


def read_all(device, n: int) -> list[protocol.LogEntry]:
    """The first ``n`` inputs from the device's log, waiting for them to come."""
    entries, after, deadline = [], 0, time.monotonic() + 60
    while len(entries) < n and time.monotonic() < deadline:
        entry = client.read_log(device, after).entry
        if entry is None:
            time.sleep(0.05)
            continue
        entries.append(entry)
        after = entry.input
    return entries


def assert_chip_scores_like_the_host(entries, x, bundle):
    """Logged raw windows equal the fed ones bit for bit; the chip's int8 outputs, scores and verdicts
    equal TFLite Micro's on the host for the same raw samples."""
    assert [e.input for e in entries] == list(range(1, len(x) + 1))
    assert all(e.kind == protocol.DataKind.RAW for e in entries)
    logged = np.stack([np.frombuffer(e.data, "<f4") for e in entries]).reshape(x.shape)
    np.testing.assert_array_equal(logged.view(np.uint32), x.astype(np.float32).view(np.uint32))
    host = bundle.score(x, "tflm")
    probs, errors = np.stack([e.result.probs for e in entries]), np.stack([e.result.errors for e in entries])
    chip = bundle.decide(probs, errors)
    for key in ("pred", "probs", "ood_score", "is_ood", "layer_errors"):
        np.testing.assert_array_equal(getattr(chip, key), getattr(host, key), err_msg=key)
    assert [np.float32(e.result.score) for e in entries] == host.ood_score.astype(np.float32).tolist()
    assert [e.result.ood for e in entries] == host.is_ood.tolist()


@pytest.mark.parametrize("which", ["digits", "motions"])
def test_the_native_chip_classifies_its_sensor_like_the_host(tmp_path, digits_bundle, motions_bundle, which):
    if which == "digits":
        path, x = (
            digits_bundle[1],
            np.concatenate([data.load("digits:test:0-4").x[:30], data.load("digits:test:5-9").x[:30]]),
        )
    else:
        path, x = motions_bundle, data.load("basic_motions:test").x  # 600-value windows: frames and reads in pieces
    bundle = Bundle.load(path)
    with start("native") as chip, client.open_device(chip.url) as device:
        chip.feed(x, rate_hz=500, repeat_from=None)
        time.sleep(0.3)
        assert client.counters(device)["inputs"] == 0  # no bundle: the chip asks for no window
        client.flash(device, bundle.archive_bytes())
        client.subscribe(device)
        entries = read_all(device, len(x))
        events = [device.read_event(2.0) for _ in range(len(x))]
        counters, pulled = client.counters(device), client.pull_ood(device)
        with pytest.raises(client.DeviceError) as refused:  # ood_only is 0 or 1
            device.request(protocol.Msg.READ_LOG, struct.pack("<IBI", 0, 2, 0))
    assert refused.value.code == protocol.Err.OUT_OF_RANGE
    assert_chip_scores_like_the_host(entries, x, bundle)
    assert [(e.input, e.ood) for e in events] == [(e.input, e.result.ood) for e in entries]
    flagged = [e for e in entries if e.result.ood]
    assert (counters["inputs"], counters["ood"]) == (len(x), len(flagged))
    assert [p["input"] for p in pulled] == [e.input for e in flagged[::-1]][: counters["capacity"]]
    np.testing.assert_array_equal(pulled[0]["x"], bundle.quantize(x[flagged[-1].input - 1 : flagged[-1].input])[0])


@pytest.mark.skipif(not HAS_QEMU, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_the_qemu_chip_runs_a_live_drifting_sensor(tmp_path, digits_bundle):
    """`edgefp sim --profile qemu-m4 --feed` drives the emulated Cortex-M4's second UART; monitor sees the
    drift, record gets the drifted raw windows, pull-ood the flagged inputs."""
    fed = data.load("digits:test:0-4").x
    drifted = fed.copy()
    drifted[60:] = 1.0 - fed[60:]  # edgefp.shifts' invert
    args = [sys.executable, "-m", "edgefp", "sim", "--profile", "qemu-m4", "--feed", "digits:test:0-4"]
    sim = subprocess.Popen(
        args + ["--rate", "50", "--drift-at", "60", "--drift", "invert"], stdout=subprocess.PIPE, text=True
    )
    try:
        url = sim.stdout.readline().strip()
        assert edgefp("flash", digits_bundle[1], "--port", url).returncode == 0
        events = [json.loads(line) for line in edgefp("monitor", "--port", url, "--count", "90").stdout.splitlines()]
        out = tmp_path / "drifted.npz"
        recorded = json.loads(
            edgefp("record", "--port", url, "--out", str(out), "--count", "10", "--ood-only", "--json").stdout
        )
        pulled = json.loads(edgefp("pull-ood", "--port", url, "--out", str(tmp_path / "ood"), "--json").stdout)
    finally:
        sim.terminate()
        sim.wait(10)
    clean = [e["ood"] for e in events if e["input"] <= 60]
    late = [e["ood"] for e in events if e["input"] > 62]
    assert len(events) == 90 and late and np.mean(late) > 0.9 and (not clean or np.mean(clean) < 0.3)
    assert recorded["samples"] == 10 and pulled["samples"] > 0
    with np.load(out) as got:
        assert got["is_ood"].all() and got["raw"].all()
        seen = {e["input"]: e["ood"] for e in events}  # the device's own verdicts, its rare false alarms included
        assert all(seen[i] for i in got["input"].tolist() if i in seen) and np.mean(got["input"] > 60) >= 0.7
        np.testing.assert_array_equal(got["x"], drifted[got["input"] - 1])
        host = Bundle.load(digits_bundle[1]).score(got["x"], "tflm")  # the Cortex-M4 quantised it as the host does
        for key in ("pred", "probs", "ood_score", "layer_errors"):
            np.testing.assert_array_equal(got[key], getattr(host, key).astype(got[key].dtype), err_msg=key)


def test_the_firmware_reads_manifest_numbers_as_the_host_does(tmp_path):
    """Every float32 (the preprocessing and scales a manifest holds) written as Python's json writes it is
    read back bit for bit, and so is the float32 nearest to arbitrary doubles; malformed numbers refused."""
    source = SOURCE / "src"
    library = tmp_path / "json.so"
    flags = ["-std=c99", "-O2", "-fPIC", "-shared", "-I", str(source)]
    subprocess.run(["gcc", *flags, str(source / "json.c"), "-o", str(library)], check=True)
    reader = ctypes.CDLL(str(library)).efp_json_real

    class Json(ctypes.Structure):  # efp_json of c/src/json.h: a span of text
        _fields_ = [("p", ctypes.c_void_p), ("end", ctypes.c_void_p)]

    def real(text: bytes, out) -> int:
        held = ctypes.create_string_buffer(text, len(text))
        start = ctypes.addressof(held)
        return reader(Json(start, start + len(text)), out)

    rng = np.random.default_rng(0)
    magnitudes = 10.0 ** rng.integers(-44, 38, 6000)
    floats = np.concatenate([rng.normal(size=6000), rng.normal(size=6000) * magnitudes]).astype(np.float32)
    doubles = rng.normal(size=6000) * 10.0 ** rng.integers(-30, 30, 6000)
    out = ctypes.c_float()
    for value in [*floats[np.isfinite(floats)].tolist(), *doubles.tolist(), 0.1, -0.0, 1e-45, 3.4028234663852886e38]:
        text = json.dumps(value).encode()
        assert real(text, ctypes.byref(out)) == 1, text
        assert np.float32(out.value).view(np.uint32) == np.float32(value).view(np.uint32), text
    for text in (b"", b"-", b".", b"1e", b"1e+", b"1.2.3", b"0x10", b"1e999", b"nan", b"--1", b"1 "):
        assert real(text, ctypes.byref(out)) == 0, text
