"""The C firmware as a device, driven by the host tool over real ptys: built for this machine (gcc,
'native') and for an emulated Cortex-M4 (arm-none-eabi-gcc + QEMU mps2-an386, 'qemu-m4'). Results
must equal TFLite Micro's on the host byte for byte; faults must get error codes, never a dead device."""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgefp import data
from edgefp.bundle import SCHEMA_VERSION, Bundle
from edgefp.firmware_host.firmware.build import Options, build, bundle_ram, operators_of
from edgefp.firmware_host.firmware.launch import start, start_native
from edgefp.firmware_host.link import client, protocol
from edgefp.firmware_host.link.client import DeviceError
from edgefp.firmware_host.link.protocol import Msg, SlotState
from edgefp.manifest import FileEntry
from tests.conftest import check_error_codes, edit_tflite, edited_archive, upload

HAS_NATIVE = all(shutil.which(tool) for tool in ("gcc", "make"))
HAS_QEMU = HAS_NATIVE and all(shutil.which(tool) for tool in ("arm-none-eabi-gcc", "qemu-system-arm"))
pytestmark = [pytest.mark.heavy, pytest.mark.skipif(not HAS_NATIVE, reason="building the firmware needs gcc and make")]
qemu_only = pytest.mark.skipif(not HAS_QEMU, reason="needs arm-none-eabi-gcc and qemu-system-arm")
DIGITS = "digits:test:0-4"
MOTIONS_TEST = "basic_motions:test"


@pytest.fixture(scope="module")
def digits(digits_bundle):
    """(bundle directory, its .efp archive bytes)."""
    path = digits_bundle[1]
    return path, Bundle.load(path).archive_bytes()


@pytest.fixture(scope="module")
def motions(motions_bundle):
    return motions_bundle, Bundle.load(motions_bundle).archive_bytes()


@pytest.fixture
def native(tmp_path):
    with start_native(build("native"), str(tmp_path / "flash.bin")) as device:
        yield device


def assert_scores_equal(got, expected):
    for key in ("pred", "probs", "ood_score", "is_ood", "layer_errors"):
        np.testing.assert_array_equal(getattr(got, key), getattr(expected, key), err_msg=key)


def test_native_device_scores_like_tflite_micro(native, digits):
    path, archive = digits
    x = data.load(DIGITS).x
    x = np.concatenate([x, 2 * x[:30]])  # amplified: errors beyond their outputs' first int8 range
    expected = Bundle.load(path).score(x, "tflm")
    for j, spec in enumerate(Bundle.load(path).manifest.outputs.layer_errors):  # so the coarse values count
        if spec.coarse_factor:
            assert (expected.layer_errors[-30:, j] > (127 - spec.zero_point) * spec.scale).any()
    with client.open_device(native.url) as device:
        assert client.flash(device, archive)["uploaded"]
        scores, latencies = client.infer_samples(device, x)
        assert_scores_equal(scores, expected)
        assert (latencies >= 0).all()
        # The device's own verdicts (counters, OOD buffer) agree with the host's.
        counters = client.counters(device)
        assert (counters["inputs"], counters["ood"]) == (len(x), int(expected.is_ood.sum()))
        pulled = client.pull_ood(device)
        flagged = np.flatnonzero(expected.is_ood)[::-1][: counters["capacity"]]
        assert len(pulled) == min(len(flagged), counters["capacity"]) > 0
        x_q = Bundle.load(path).quantize(x)
        for sample, index in zip(pulled, flagged):
            assert sample["input"] == index + 1
            np.testing.assert_array_equal(sample["x"], x_q[index])
        one = client.infer(device, x_q[flagged[0]])
        assert one.ood and np.float32(one.score) == np.float32(expected.ood_score[flagged[0]])
        bench = client.bench(device, runs=20, warmup=2)
        assert bench["runs"] == 20 and bench["latency_us"]["mean"] > 0 and "instructions" not in bench


def test_bundles_swap_without_rebuilding_and_survive_power_loss(tmp_path, digits, motions):
    flash_file, executable = str(tmp_path / "flash.bin"), build("native")
    x = data.load(MOTIONS_TEST).x
    with start_native(executable, flash_file) as native, client.open_device(native.url) as device:
        client.flash(device, digits[1])
        client.flash(device, motions[1])
        scores, _ = client.infer_samples(device, x)
        assert_scores_equal(scores, Bundle.load(motions[0]).score(x, "tflm"))
        states = [slot.state for slot in client.hello(device).slots]
        assert sorted(states) == [SlotState.VERIFIED, SlotState.ACTIVE]
        assert client.flash(device, digits[1])["uploaded"] is False  # still verified in its slot: ACTIVATE only
        upload(device, motions[1], upto=len(motions[1]) // 2)
        native.kill()  # power lost half-way through the upload
    with start_native(executable, flash_file) as native, client.open_device(native.url) as device:
        hello = client.hello(device)
        assert hello.active.sha256 == hashlib.sha256(digits[1]).digest()
        assert sorted(slot.state for slot in hello.slots) == [SlotState.EMPTY, SlotState.ACTIVE]
        x = data.load(DIGITS).x[:20]
        scores, _ = client.infer_samples(device, x)
        assert_scores_equal(scores, Bundle.load(digits[0]).score(x, "tflm"))
        upload(device, motions[1], upto=len(motions[1]) // 3)
        client.reset(device, reboot=True)  # the chip restarts mid-upload: the same
        assert client.hello(device).active.name == Bundle.load(digits[0]).manifest.name


def test_faults_get_error_codes_and_the_device_keeps_running(native, digits):
    with client.open_device(native.url) as device:
        check_error_codes(device, digits[1], (8, 8, 1))
        chunk = device.request(Msg.UPLOAD_BEGIN, protocol.pack_upload_begin(4, bytes(32), "x"))
        assert protocol.unpack("I", chunk) % 16 == 0  # flash writes stay aligned


def test_bundles_that_do_not_fit_are_refused_and_the_last_one_serves(tmp_path, digits, motions):
    needs = {}
    tiny = build("native", arena_bytes=4096)
    with start_native(tiny, str(tmp_path / "tiny.bin")) as native, client.open_device(native.url) as device:
        for name, (_, archive) in {"digits": digits, "motions": motions}.items():
            with pytest.raises(DeviceError, match=r"DOES_NOT_FIT: the model needs \d+ bytes more RAM") as refused:
                client.flash(device, archive)
            needs[name] = 4096 + int(str(refused.value).split("needs ")[1].split()[0])
            assert client.hello(device).active is None
            bundle = Bundle.load({"digits": digits, "motions": motions}[name][0])
            assert bundle_ram(bundle, "native")["ram_bytes"] == needs[name]  # the host's figure is exact
    assert needs["digits"] != needs["motions"]
    small, large = sorted(needs, key=needs.get)
    arena = (needs[small] + needs[large]) // 32 * 16
    executable = build("native", arena_bytes=arena)
    bundles = {"digits": digits, "motions": motions}
    with start_native(executable, str(tmp_path / "mid.bin")) as native, client.open_device(native.url) as device:
        client.flash(device, bundles[small][1])
        with pytest.raises(DeviceError, match=f"needs {needs[large] - arena} bytes more RAM than native"):
            client.flash(device, bundles[large][1])
        assert client.hello(device).active.sha256 == hashlib.sha256(bundles[small][1]).digest()
        client.bench(device, runs=3, warmup=0)


@pytest.fixture(scope="module")
def wrapped_peers(tmp_path_factory):
    """Peer models wrapped without a fingerprint: keyword spotting (int8 in, one channel), micro_speech
    (1,960 values on its last axis) and hello_world (one value): {name: Bundle}."""
    from edgefp.wrap import wrap

    root, made = tmp_path_factory.mktemp("peers"), {}
    for name in ("mlperf_tiny_kws_ref", "tflm_micro_speech_quantized", "tflm_hello_world_int8"):
        wrap(os.path.join(os.path.dirname(__file__), "..", "data", "models", f"{name}.tflite"), str(root / name))
        made[name] = Bundle.load(str(root / name))
    return made


@pytest.mark.parametrize("sensor_loop", [True, False])
def test_the_hosts_ram_figure_is_what_the_firmware_reserves(tmp_path, digits, motions, wrapped_peers, sensor_loop):
    """Standardised inputs keep a mean and a std per channel, wrapped ones none; the sensor window only
    with the sensor loop: read from the DOES_NOT_FIT answer of a firmware with a 64-byte arena."""
    options = Options(sensor_loop=sensor_loop)
    probe = build("native", arena_bytes=64, cflags=options.cflags())
    bundles = {"digits": Bundle.load(digits[0]), "motions": Bundle.load(motions[0]), **wrapped_peers}
    with start_native(probe, str(tmp_path / "flash.bin")) as native, client.open_device(native.url) as device:
        for name, bundle in bundles.items():
            with pytest.raises(DeviceError, match=r"DOES_NOT_FIT: the model needs \d+ bytes more RAM") as refused:
                client.flash(device, bundle.archive_bytes())
            reserved = 64 + int(str(refused.value).split("needs ")[1].split()[0])
            ram = bundle_ram(bundle, "native", options)
            assert ram["ram_bytes"] == reserved, name
            shape, round16 = bundle.manifest.input.shape, lambda n: (n + 15) // 16 * 16
            window = round16(4 * int(np.prod(shape))) if sensor_loop else 0
            standardisation = round16(8 * shape[-1]) if name in ("digits", "motions") else 0
            assert ram["sensor_bytes"] == window + standardisation, name


def test_a_firmware_for_given_bundles_runs_them_alone(tmp_path, digits, motions, wrapped_peers):
    """Only the digits and motions bundles' operators, codes for names, no sensor loop: the same scores;
    a model with another operator refused at upload as one the engine lacks, by its code."""
    options = Options(
        operators_of([Bundle.load(digits[0]), Bundle.load(motions[0])]), op_names=False, sensor_loop=False
    )
    for bundle in (Bundle.load(digits[0]), *wrapped_peers.values()):  # read from the model as LiteRT lists them
        assert list(operators_of([bundle])) == sorted(bundle.manifest.ops)
    assert "AVERAGE_POOL_2D" not in options.operators and "CONV_2D" in options.operators
    x = data.load(DIGITS).x[:40]
    with start_native(build("native", cflags=options.cflags()), str(tmp_path / "flash.bin")) as native:
        with client.open_device(native.url) as device:
            client.flash(device, digits[1])
            scores, _ = client.infer_samples(device, x)
            assert_scores_equal(scores, Bundle.load(digits[0]).score(x, "tflm"))
            client.flash(device, motions[1])
            with pytest.raises(DeviceError, match="UNSUPPORTED_OP: unsupported operator #1$"):  # AVERAGE_POOL_2D
                client.flash(device, wrapped_peers["mlperf_tiny_kws_ref"].archive_bytes())
            assert client.hello(device).active.sha256 == hashlib.sha256(motions[1]).digest()


def test_export_firmware_writes_a_project_that_builds(tmp_path, digits):
    out = tmp_path / "fw"
    result = subprocess.run(
        [sys.executable, "-m", "edgefp", "export-firmware", "--board", "native", "--out", str(out), "--build"]
        + ["--bundle", digits[0], "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tested"] and 0 < report["sizes"]["static_ram_bytes"] < 16 * 1024
    assert report["bundles"][0]["fits"] and report["bundles"][0]["ram_bytes"] < report["sizes"]["arena_bytes"]
    made = subprocess.run(["make", "-C", str(out), f"BUILD_DIR={tmp_path / 'b'}"], capture_output=True)
    assert made.returncode == 0 and (tmp_path / "b" / "firmware").exists()
    alone = [sys.executable, "-m", "edgefp", "export-firmware", "--board", "native", "--only-bundle-ops"]
    refused = subprocess.run([*alone, "--out", str(tmp_path / "none")], capture_output=True, text=True)
    assert refused.returncode == 2 and "give them with --bundle" in refused.stderr and not (tmp_path / "none").exists()
    made = subprocess.run(
        [*alone, "--no-op-names", "--no-sensor", "--bundle", digits[0], "--out", str(tmp_path / "alone"), "--json"],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["operators"] == list(operators_of([Bundle.load(digits[0])]))
    settings = (tmp_path / "alone" / "board.mk").read_text()
    assert "-DEFP_OPS_ONLY -DEFP_OP_" in settings and "-DEFP_OP_CONV_2D " in settings
    assert "-DEFP_OP_NAMES=0 -DEFP_SENSOR_LOOP=0" in settings
    template = tmp_path / "nrf"
    subprocess.run([sys.executable, "-m", "edgefp", "export-firmware", "--board", "nrf52840", "--out", str(template)])
    assert "CROSS = arm-none-eabi-" in (template / "board.mk").read_text()
    if shutil.which("arm-none-eabi-gcc"):  # the template's stubs compile; linking waits for the chip's link.ld
        made = subprocess.run(["make", "-C", str(template)], capture_output=True, text=True)
        assert made.returncode != 0 and "write the board layer for this board first" in made.stderr
        assert (template / "build" / "template" / "obj-template" / "board" / "board.o").exists()


def test_a_model_with_an_unknown_operator_is_refused_by_name(native, digits):
    def tanh_to_gather(m, sg, schema):
        for code in m.operatorCodes:
            if code.builtinCode == 28:  # TANH
                code.builtinCode = code.deprecatedBuiltinCode = 36  # GATHER

    bundle = Bundle.load(digits[0])
    model = edit_tflite(bundle.model_bytes, tanh_to_gather)
    listed = {"model.tflite": FileEntry(hashlib.sha256(model).hexdigest(), len(model))}
    bundle.manifest = dataclasses.replace(bundle.manifest, files=listed)
    with client.open_device(native.url) as device:
        client.flash(device, digits[1])
        with pytest.raises(DeviceError, match="UNSUPPORTED_OP: unsupported operator GATHER"):
            client.flash(device, Bundle(bundle.manifest, {"model.tflite": model}).archive_bytes())
        assert client.hello(device).active.sha256 == hashlib.sha256(digits[1]).digest()


def test_archives_that_do_not_verify_are_refused(native, digits):
    bundle = Bundle.load(digits[0])
    model = bytearray(bundle.model_bytes)
    model[len(model) // 2] ^= 1
    tampered = Bundle(bundle.manifest, {"model.tflite": bytes(model)}).archive_bytes()
    unlisted = Bundle(bundle.manifest, {**bundle.files, "extra.bin": b"x"}).archive_bytes()
    older = edited_archive({**bundle.manifest.to_json(), "version": SCHEMA_VERSION - 1}, bundle.files)
    rng = np.random.default_rng(0)
    with client.open_device(native.url) as device:
        client.flash(device, digits[1])
        refusals = (
            (tampered, "does not match its SHA-256"),
            (unlisted, "not listed"),
            (older, f"bundle version is not {SCHEMA_VERSION}"),
        )
        for archive, reason in refusals:  # the host's own checks bypassed: the device refuses each itself
            with pytest.raises(DeviceError, match=f"INVALID_BUNDLE: .*{reason}"):
                upload(device, archive)
        for _ in range(40):  # damage in the tar headers and the manifest: an error code, never a crash
            broken = bytearray(digits[1])
            for at in rng.integers(0, 16384, size=rng.integers(1, 8)):
                broken[at] = rng.integers(256)
            try:
                upload(device, bytes(broken))
            except DeviceError as refused:
                assert "INVALID_BUNDLE" in str(refused) or "UNSUPPORTED_OP" in str(refused)
        client.flash(device, digits[1])
        assert client.hello(device).active.sha256 == hashlib.sha256(digits[1]).digest()


def oversized_archive(path: str) -> bytes:
    """A valid bundle archive of more than 2 MB (the model plus a listed padding file)."""
    bundle, padding = Bundle.load(path), bytes(2 << 20)
    files = {**bundle.manifest.files, "padding.bin": FileEntry(hashlib.sha256(padding).hexdigest(), len(padding))}
    manifest = dataclasses.replace(bundle.manifest, files=files)
    return Bundle(manifest, {**bundle.files, "padding.bin": padding}).archive_bytes()


def test_archive_beyond_storage_is_refused_at_once(native, digits):
    with client.open_device(native.url) as device:
        with pytest.raises(DeviceError, match="DOES_NOT_FIT: the archive needs .* bytes more storage than native"):
            client.flash(device, oversized_archive(digits[0]))


@qemu_only
def test_qemu_firmware_end_to_end_through_the_cli(tmp_path, digits):
    path, archive = digits
    (tmp_path / "digits.efp").write_bytes(archive)
    edgefp = [sys.executable, "-m", "edgefp"]
    sim = subprocess.Popen([*edgefp, "sim", "--profile", "qemu-m4"], stdout=subprocess.PIPE, text=True)
    try:
        url = sim.stdout.readline().strip()
        run = lambda *args: subprocess.run([*edgefp, *args], capture_output=True, text=True, check=True).stdout  # noqa: E731
        info = json.loads(run("info", "--port", url, "--json"))
        assert (info["board"], info["firmware"]) == ("qemu-m4", "edgefp-fw 0.1.0")
        run("flash", str(tmp_path / "digits.efp"), "--port", url)
        run("infer", "--port", url, "--data", DIGITS, "--out", str(tmp_path / "device.npz"))
        run("score", path, "--data", DIGITS, "--runtime", "tflm", "--out", str(tmp_path / "host.npz"))
        device, host = np.load(tmp_path / "device.npz"), np.load(tmp_path / "host.npz")
        for key in host.files:
            np.testing.assert_array_equal(device[key], host[key], err_msg=key)
        bench = json.loads(run("bench", "--port", url, "-n", "20", "--warmup", "2", "--json"))
        assert bench["instructions"]["mean"] == pytest.approx(bench["latency_us"]["mean"] * 1000)
        assert 10_000 < bench["instructions"]["mean"] < 10_000_000
        pulled = json.loads(run("pull-ood", "--port", url, "--out", str(tmp_path / "ood"), "--json"))
        assert pulled["samples"] > 0
        run("monitor", "--port", url, "--duration", "0.5")
    finally:
        sim.terminate()
        sim.wait(10)


@qemu_only
def test_qemu_chip_reset_mid_upload_keeps_the_first_bundle(digits, motions):
    with start("qemu-m4") as chip:
        with client.open_device(chip.url) as device:
            client.flash(device, digits[1])
            x_q = Bundle.load(digits[0]).quantize(data.load(DIGITS).x[:5])
            before = [client.infer(device, sample).probs for sample in x_q]
            upload(device, motions[1], upto=len(motions[1]) // 2)
        with client.open_device(chip.url) as device:  # another host, after the first one died
            client.reset(device, reboot=True)
            hello = client.hello(device)
            assert hello.active.sha256 == hashlib.sha256(digits[1]).digest()
            assert sorted(slot.state for slot in hello.slots) == [SlotState.EMPTY, SlotState.ACTIVE]
            client.subscribe(device)
            after = [client.infer(device, sample).probs for sample in x_q]
            np.testing.assert_array_equal(before, after)
            assert device.read_event(2.0).input == 1  # counters start over after a reset
            device.port.write(os.urandom(5000) + b"\x00")
            with pytest.raises(DeviceError, match="DOES_NOT_FIT: the archive needs .* more storage than qemu-m4"):
                client.flash(device, oversized_archive(digits[0]))
            device.max_frame = 1 << 16
            with pytest.raises(DeviceError, match="FRAME_TOO_LARGE"):
                device.request(Msg.INFER, bytes(range(1, 256)) * 40)
            assert client.infer(device, x_q[0]).latency_us > 0


def test_bench_is_capped_and_requests_are_checked_to_the_byte(tmp_path, digits):
    import struct
    import time

    from edgefp.firmware_host.link.framing import DELIMITER, encode_frame
    from edgefp.limits import MAX_INVOKES

    capped = build("native", cflags="-DEFP_BENCH_MAX_US=20000")  # a 20-ms time cap
    with start_native(capped, str(tmp_path / "flash.bin")) as native:
        with client.open_device(native.url) as device:
            client.flash(device, digits[1])
            for runs, warmup in [(MAX_INVOKES + 1, 0), (0xFFFFFFFF, 0), (1, 0xFFFFFFFF), (0xFFFFFFFF, 1)]:
                with pytest.raises(DeviceError, match=r"OVER_LIMIT: runs \+ warmup over 100000"):
                    client.bench(device, runs=runs, warmup=warmup)
            started = time.monotonic()
            with pytest.raises(DeviceError, match="OVER_LIMIT: time limit reached after"):
                client.bench(device, runs=MAX_INVOKES, warmup=0)
            assert time.monotonic() - started < 2
            with pytest.raises(DeviceError, match="OUT_OF_RANGE: enable must be 0 or 1"):
                device.request(Msg.EVENTS, b"\x02")
            with pytest.raises(DeviceError, match="OUT_OF_RANGE: reboot must be 0 or 1"):
                device.request(Msg.RESET, b"\x05")
            with pytest.raises(DeviceError, match="BAD_LENGTH"):
                device.request(Msg.AUTH, bytes(33))
            device.port.write(DELIMITER + encode_frame(Msg.GET_COUNTERS, 0, b""))  # seq 0: never a request
            time.sleep(0.3)
            assert device.port.read(4096) == b""
            assert client.bench(device, runs=5, warmup=0)["runs"] == 5 and client.counters(device)["inputs"] == 0
            assert struct.unpack("<H", device.request(Msg.HELLO, b"\x01\x00")[:2])[0] == 1


def test_no_process_finds_a_build_another_is_still_writing(tmp_path):
    """A build is written aside and renamed into the cache whole: while one runs, its cache folder either
    does not exist or holds the finished executable, and two builds of the same sources end as one."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    code = "from edgefp.firmware_host.firmware.build import build; print(build('native'))"
    builds = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in "ab"]
    cache = tmp_path / "edgefp" / "firmware"
    seen_partial = []
    while any(process.poll() is None for process in builds):
        for folder in cache.glob("native-*") if cache.exists() else []:
            if not (folder / "firmware").exists() and folder.exists():
                seen_partial.append(folder.name)
    outputs = [process.communicate()[0].strip() for process in builds]
    assert [process.returncode for process in builds] == [0, 0] and not seen_partial
    assert outputs[0] == outputs[1] and os.access(outputs[0], os.X_OK)
    assert sorted(path.name for path in cache.iterdir()) == [os.path.basename(os.path.dirname(outputs[0]))]
