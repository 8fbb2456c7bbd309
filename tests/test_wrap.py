"""Models that nobody here trained, as bundles without a fingerprint (edgefp wrap): scored on every
runtime, the firmware's engine equal to TFLite Micro byte for byte; served by the native firmware,
the emulated Cortex-M4 and the agent, their answers equal to the host's; refusals in one line."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgefp.bundle import Bundle
from edgefp.firmware_host.boards import get_board
from edgefp.firmware_host.firmware.build import build
from edgefp.firmware_host.firmware.launch import start, start_native
from edgefp.firmware_host.link import client

MODELS = os.path.join(os.path.dirname(__file__), "data", "models")
EDGEFP = [sys.executable, "-m", "edgefp"]
HAS_GCC = all(shutil.which(tool) for tool in ("gcc", "make"))
HAS_QEMU = HAS_GCC and all(shutil.which(tool) for tool in ("arm-none-eabi-gcc", "qemu-system-arm"))
WRAPPED = (
    "mlperf_tiny_kws_ref",
    "mlperf_tiny_ad01_toycar_int8",
    "mlperf_tiny_str_ww_ref",
    "tflm_micro_speech_quantized",
    "tflm_hello_world_int8",
)


def edgefp(*args, check=True):
    result = subprocess.run([*EDGEFP, *args], capture_output=True, text=True)
    assert not check or result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory):
    """Peer models wrapped as .efp archives, with int8 inputs for them: {name: (archive, x.npz)}."""
    root = tmp_path_factory.mktemp("wrapped")
    made = {}
    for i, name in enumerate(WRAPPED):
        archive = str(root / f"{name}.efp")
        report = json.loads(edgefp("wrap", os.path.join(MODELS, f"{name}.tflite"), "--out", archive, "--json").stdout)
        assert report["name"] == name[:32] and report["tflm_arena_bytes"] > 0
        shape = list(Bundle.load(archive).manifest.input.shape)
        x = np.random.default_rng(i).integers(-128, 128, size=(12, *shape), dtype=np.int8)
        x[:3] = np.stack([np.full(shape, v, np.int8) for v in (-128, 0, 127)])
        np.savez(root / f"{name}.npz", x=x)
        made[name] = (archive, str(root / f"{name}.npz"))
    return made


def _score(archive, data, runtime, out):
    edgefp("score", archive, "--data", data, "--runtime", runtime, "--out", str(out))
    return np.load(out)


@pytest.mark.heavy
@pytest.mark.skipif(not HAS_GCC, reason="the firmware runtime builds the engine with gcc")
@pytest.mark.parametrize("name", WRAPPED)
def test_wrapped_peer_model_scores_alike_on_the_firmware_engine_and_tflite_micro(wrapped, name, tmp_path):
    archive, data = wrapped[name]
    tflm = _score(archive, data, "tflm", tmp_path / "tflm.npz")
    engine = _score(archive, data, "firmware", tmp_path / "firmware.npz")
    litert = _score(archive, data, "litert", tmp_path / "litert.npz")
    assert sorted(tflm.files) == ["output", "pred"]
    assert tflm["output"].dtype == np.int8 and tflm["output"].tobytes() == engine["output"].tobytes()
    np.testing.assert_array_equal(tflm["pred"], engine["pred"])
    np.testing.assert_array_equal(tflm["pred"], np.argmax(tflm["output"].reshape(len(tflm["output"]), -1), axis=1))
    assert litert["output"].shape == tflm["output"].shape  # LiteRT rounds differently, at most by an LSB
    assert np.abs(litert["output"].astype(int) - tflm["output"].astype(int)).max() <= 1
    inspect = json.loads(edgefp("inspect", archive, "--json").stdout)
    assert inspect["verified"] and 0 < inspect["engine_arena_bytes"] <= inspect["tflm_arena_bytes"]


@pytest.mark.heavy  # inspect builds the firmware's engine to measure its arena, in its child process
def test_wrapped_bundle_works_with_the_bundle_commands(wrapped, tmp_path):
    archive, data = wrapped["mlperf_tiny_kws_ref"]
    lines = edgefp("inspect", archive).stdout
    assert "no fingerprint (wrapped from mlperf_tiny_kws_ref.tflite): no OOD check" in lines
    bench = json.loads(edgefp("bench", archive, "--runtime", "tflm", "-n", "5", "--warmup", "1", "--json").stdout)
    assert bench["runs"] == 5 and bench["latency_us"]["mean"] > 0
    edgefp("report", archive, "--data", data, "--out", str(tmp_path / "report"), "--board", "nrf52840")
    page = (tmp_path / "report" / "index.html").read_text()
    assert "no fingerprint" in page and "most frequent argmax" in page
    exported = edgefp(
        "export-firmware", "--board", "nrf52840", "--out", str(tmp_path / "fw"), "--bundle", archive, "--json"
    )
    (ram,) = json.loads(exported.stdout)["bundles"]
    assert ram["tables_and_ood_bytes"] == 0 and ram["fits"]  # no fingerprint: only the engine and the sensor window
    assert ram["ram_bytes"] == ram["engine_arena_bytes"] + ram["sensor_bytes"] and ram["engine_arena_bytes"] > 0
    written = edgefp("export-c", archive, "--out", str(tmp_path / "c")).stdout
    assert "model_data.cc" in written and "ood_config" not in written
    repo = edgefp("repo", "add", archive, "--repo", str(tmp_path / "repo"), check=False)
    assert repo.returncode == 2 and "without a fingerprint cannot be selected" in repo.stderr


def test_data_for_a_wrapped_bundle_is_the_models_input(wrapped, tmp_path):
    archive, _ = wrapped["mlperf_tiny_kws_ref"]
    np.savez(tmp_path / "floats.npz", x=np.zeros((3, 49, 10, 1), np.float32))
    np.savez(tmp_path / "shape.npz", x=np.zeros((3, 49, 10), np.int8))
    for data, why in (
        ("digits:test", "has no fingerprint; give an .npz whose x holds int8 samples of shape [49, 10, 1]"),
        (str(tmp_path / "floats.npz"), "x is float32 of shape [3, 49, 10, 1]"),
        (str(tmp_path / "shape.npz"), "x is int8 of shape [3, 49, 10]"),
        (str(tmp_path / "none.npz"), "no such file"),
    ):
        result = edgefp("score", archive, "--data", data, check=False)
        assert result.returncode == 2 and why in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.heavy
def test_models_a_bundle_cannot_hold_are_refused_in_one_line(tmp_path):
    import tensorflow as tf

    from tests.firmware.test_engine import _convert

    two_inputs, _ = _convert(lambda x, y: x + y, [(4,), (4,)])
    (tmp_path / "two.tflite").write_bytes(two_inputs)
    (tmp_path / "junk.tflite").write_bytes(b"TFL3" * 64)
    for model, why in (
        ("two.tflite", "the model takes 2 inputs; a bundle takes one"),
        ("junk.tflite", "not a TFLite model LiteRT can load"),
        ("missing.tflite", "cannot read the model"),
    ):
        result = edgefp("wrap", str(tmp_path / model), "--out", str(tmp_path / "b.efp"), check=False)
        assert result.returncode == 2 and why in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert not (tmp_path / "b.efp").exists()
    tanh, _ = _convert(tf.tanh, (8,))
    (tmp_path / "tanh.tflite").write_bytes(tanh)
    bad_name = edgefp(
        "wrap", str(tmp_path / "tanh.tflite"), "--out", str(tmp_path / "b"), "--name", "Bad-Name", check=False
    )
    assert bad_name.returncode == 2 and "must be 1-32 characters of a-z, 0-9 and _" in bad_name.stderr


@pytest.mark.heavy
@pytest.mark.skipif(not HAS_GCC, reason="the firmware runtime builds the engine with gcc")
def test_float_model_with_two_outputs_scores_alike_on_the_firmware_engine_and_tflite_micro(tmp_path):
    """float32 in (QUANTIZE first), two float32 outputs (DEQUANTIZE last): output, output_1 and pred."""
    import tensorflow as tf

    from tests.firmware.test_engine import _convert

    w = tf.constant(np.random.default_rng(3).normal(size=(12, 5)).astype(np.float32))
    model, _ = _convert(lambda x: (tf.nn.softmax(tf.reshape(x, [1, 12]) @ w), tf.tanh(x)), (3, 4), float_io=True)
    (tmp_path / "float.tflite").write_bytes(model)
    edgefp("wrap", str(tmp_path / "float.tflite"), "--out", str(tmp_path / "float.efp"))
    x = np.random.default_rng(4).normal(scale=3.0, size=(40, 3, 4)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    tflm = _score(str(tmp_path / "float.efp"), str(tmp_path / "x.npz"), "tflm", tmp_path / "tflm.npz")
    engine = _score(str(tmp_path / "float.efp"), str(tmp_path / "x.npz"), "firmware", tmp_path / "firmware.npz")
    assert sorted(tflm.files) == sorted(engine.files) == ["output", "output_1", "pred"]
    assert tflm["output"].shape == (40, 5) and tflm["output_1"].shape == (40, 3, 4)
    for key in ("output", "output_1"):
        assert tflm[key].dtype == engine[key].dtype == np.float32 and tflm[key].tobytes() == engine[key].tobytes()
    np.testing.assert_array_equal(tflm["pred"], engine["pred"])
    if not HAS_GCC:
        return
    from tests.firmware.test_sensing import read_all

    with start("native") as chip, client.open_device(chip.url) as device:  # its sensor: efp_classify
        client.flash(device, (tmp_path / "float.efp").read_bytes())
        chip.feed(x, rate_hz=500, repeat_from=None)
        entries = read_all(device, len(x))
    assert [e.input for e in entries] == list(range(1, len(x) + 1)) and not any(e.result.ood for e in entries)
    assert b"".join(e.data for e in entries) == x.tobytes()  # the raw float32 windows, as the model takes them
    assert [e.result.pred for e in entries] == engine["pred"].tolist()


def _device_scores(url, archive, data, out):
    edgefp("flash", archive, "--port", url)
    edgefp("infer", "--port", url, "--data", data, "--out", str(out))
    return np.load(out)


@pytest.mark.heavy
@pytest.mark.skipif(not HAS_GCC, reason="building the firmware needs gcc and make")
def test_native_firmware_serves_every_peer_model_that_fits_its_storage(wrapped, tmp_path):
    executable = build("native", max_frame=12288)  # the 96x96 person detector's input is 9,216 bytes
    peers = {**wrapped, "vww": _wrap_vww(tmp_path)}
    with start_native(executable, str(tmp_path / "flash.bin")) as device:
        for name, (archive, data) in peers.items():
            bundle = Bundle.load(archive)
            if os.path.getsize(archive) > get_board("native").flash_bytes:
                continue
            got = _device_scores(device.url, archive, data, tmp_path / f"{name}_device.npz")
            host = _score(archive, data, "firmware", tmp_path / f"{name}_host.npz")
            assert got["output"].tobytes() == host["output"].tobytes(), name
            np.testing.assert_array_equal(got["pred"], host["pred"])
            with client.open_device(device.url) as open_device:
                assert client.hello(open_device).active.name == bundle.manifest.name
        bench = json.loads(edgefp("bench", "--port", device.url, "-n", "3", "--warmup", "0", "--json").stdout)
        assert bench["runs"] == 3 and bench["latency_us"]["mean"] > 0


def _wrap_vww(tmp_path):
    archive = str(tmp_path / "vww.efp")
    edgefp("wrap", os.path.join(MODELS, "mlperf_tiny_v01_vww_96_int8_pad.tflite"), "--out", archive, "--name", "vww")
    x = np.random.default_rng(0).integers(-128, 128, size=(3, 96, 96, 1), dtype=np.int8)
    np.savez(tmp_path / "vww.npz", x=x)
    return archive, str(tmp_path / "vww.npz")


@pytest.mark.heavy
@pytest.mark.skipif(not HAS_QEMU, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_emulated_cortex_m4_answers_like_the_host(wrapped, tmp_path):
    """The kernels for the DSP extension, for real: keyword spotting (convolutions, depthwise, fully
    connected) and the autoencoder (fully connected, 640 outputs) on QEMU's Cortex-M4."""
    with start("qemu-m4") as chip:
        for name in ("mlperf_tiny_kws_ref", "mlperf_tiny_ad01_toycar_int8"):
            archive, data = wrapped[name]
            got = _device_scores(chip.url, archive, data, tmp_path / f"{name}_chip.npz")
            host = _score(archive, data, "tflm", tmp_path / f"{name}_tflm.npz")
            assert got["output"].tobytes() == host["output"].tobytes(), name


def test_agent_serves_a_wrapped_model_on_litert(wrapped, tmp_path):
    archive, data = wrapped["mlperf_tiny_ad01_toycar_int8"]
    sim = subprocess.Popen([*EDGEFP, "sim", "--profile", "pi"], stdout=subprocess.PIPE, text=True)
    try:
        url = sim.stdout.readline().strip()
        got = _device_scores(url, archive, data, tmp_path / "agent.npz")
        host = _score(archive, data, "litert", tmp_path / "litert.npz")
        assert got["output"].tobytes() == host["output"].tobytes()
        events = json.loads(edgefp("info", "--port", url, "--json").stdout)
        assert events["active"]["name"] == "mlperf_tiny_ad01_toycar_int8"
    finally:
        sim.terminate()
        sim.wait(10)
