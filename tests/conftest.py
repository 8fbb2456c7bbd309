import hashlib
import os
import shutil
import signal
import struct
import sys
import tempfile

import numpy as np
import pytest

KEY = b"a-shared-key-of-32-bytes-length!"  # for agents that require AUTH
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMP = tempfile.gettempdir()  # found before the audit hook below: finding it opens files, which the hook sees


def _beside_the_repository(path) -> bool:
    """Whether ``path`` lies in a folder that holds the repository (beside it, or further up). Allowed
    there: the repository itself, the Python installation, the home's hidden folders (caches) and the
    temporary folder, unless the repository's own folder is in it. A fresh clone has nothing else
    around it, so no test may read from there."""
    try:
        path = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    root = os.path.realpath(ROOT)
    home = os.path.realpath(os.path.expanduser("~"))

    def under(folder: str) -> bool:
        folder = os.path.realpath(folder)
        return os.path.commonpath([path, folder]) == folder

    if any(under(folder) for folder in (root, sys.prefix, sys.base_prefix, sys.exec_prefix)):
        return False
    if os.path.dirname(path) != home and path.startswith(os.path.join(home, ".")):
        return False
    if under(TEMP) and not under(os.path.dirname(root)):
        return False
    above = os.path.dirname(root)
    while os.path.dirname(above) != above:  # every folder above the repository but the root of the disk
        if under(above):
            return True
        above = os.path.dirname(above)
    return False


_READ_BESIDE: list[str] = []

# ``make test-fast`` (pytest --fast) leaves out the heavy tests: those that train or convert a model with
# TensorFlow, or build or emulate the firmware. A test is heavy when it is marked ``heavy`` (a module with
# ``pytestmark``) or uses a fixture declared with ``@heavy``, directly or through other fixtures. Under
# --fast, a test that is not heavy and still imports TensorFlow or Keras, runs a compiler, make or QEMU, or
# runs or loads something built into edgefp's firmware cache fails, naming what it did, and that cache
# starts empty, as on a fresh clone: the selection cannot drift from the rule. (A child process is out of
# the guard's sight: a test whose child trains or builds is marked by hand.)
HEAVY_FIXTURES: set[str] = set()
_GUARDING = False  # True while a test that --fast kept runs
_HEAVY_DONE: list[str] = []
_HEAVY_MODULES = {"tensorflow", "keras", "tf_keras"}
_HEAVY_PROGRAMS = {"make", "gcc", "cc", "g++", "clang", "arm-none-eabi-gcc", "qemu-system-arm"}
_FIRMWARE_CACHE = os.sep + os.path.join("edgefp", "firmware") + os.sep


def heavy(fixture):
    """Declare a fixture heavy (it trains, converts or builds): every test that uses it is heavy too."""
    HEAVY_FIXTURES.add(fixture.__name__)
    return fixture


def _heavy_action(event: str, args: tuple) -> str | None:
    """What makes this audit event heavy, or None."""
    if event == "import" and args[0].partition(".")[0] in _HEAVY_MODULES:
        return f"imports {args[0]}"
    if event == "subprocess.Popen" and isinstance(args[1], (list, tuple)) and args[1]:
        program = os.fsdecode(args[1][0])
        if os.path.basename(program) in _HEAVY_PROGRAMS or _FIRMWARE_CACHE in os.path.realpath(program):
            return f"runs {program}"
    if event == "ctypes.dlopen" and isinstance(args[0], (str, bytes)) and _FIRMWARE_CACHE in os.fsdecode(args[0]):
        return f"loads {os.fsdecode(args[0])}"
    return None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[0], (str, bytes)) and _beside_the_repository(args[0]):
        _READ_BESIDE.append(os.fsdecode(args[0]))
    elif event == "subprocess.Popen" and isinstance(args[1], (list, tuple)):
        paths = [arg for arg in map(str, args[1]) if os.sep in arg and os.path.exists(arg.split(":")[0])]
        _READ_BESIDE.extend(arg for arg in paths if _beside_the_repository(arg.split(":")[0]))
    if _GUARDING and (action := _heavy_action(event, args)):
        _HEAVY_DONE.append(action)
        raise pytest.fail.Exception(f"this test {action}: mark it heavy, or use a fixture declared @heavy")


sys.addaudithook(_audit)


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true", help="leave out the heavy tests (make test-fast)")
    parser.addoption("--heavy", action="store_true", help="only the heavy tests (make test: --fast, then --heavy)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "heavy: trains or converts a model with TensorFlow, or builds or emulates the firmware"
    )
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # a shell's background job (`make test &`): Ctrl-C
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, for the tests of Ctrl-C
    if config.getoption("--fast"):  # an empty firmware cache, as on a fresh clone: a build cannot hide in it
        os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="edgefp-fast-cache-")


def pytest_unconfigure(config):
    if config.getoption("--fast"):
        shutil.rmtree(os.environ["XDG_CACHE_HOME"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HEAVY_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.heavy)
    if config.getoption("--fast") or config.getoption("--heavy"):
        keep_heavy = config.getoption("--heavy")
        left_out = [item for item in items if bool(item.get_closest_marker("heavy")) != keep_heavy]
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if bool(item.get_closest_marker("heavy")) == keep_heavy]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under --fast, guard every test (its fixtures included) against heavy work."""
    global _GUARDING
    _GUARDING = item.config.getoption("--fast")
    _HEAVY_DONE.clear()
    try:
        return (yield)
    finally:
        _GUARDING = False


@pytest.fixture(autouse=True)
def nothing_read_beside_the_repository():
    """Fail the test that opened, or handed a command, a file next to the repository."""
    _READ_BESIDE.clear()
    yield
    assert not _READ_BESIDE, f"read from beside the repository, which a fresh clone lacks: {_READ_BESIDE[:3]}"


@pytest.fixture(autouse=True)
def nothing_heavy_under_fast():
    """Under --fast, fail the test that did heavy work even where its code caught the guard's failure."""
    yield
    assert not _HEAVY_DONE, f"this test {_HEAVY_DONE[0]}: mark it heavy, or use a fixture declared @heavy"


def _saved_run(tmp_path_factory, name: str, dataset, **options):
    """``train(dataset, **options)`` saved as a RUN in a fresh folder: (fingerprint, RUN directory)."""
    from edgefp.trainer import train

    fingerprint = train(dataset, progress=False, **options)
    run_dir = str(tmp_path_factory.mktemp(name) / "run")
    fingerprint.save(run_dir)
    return fingerprint, run_dir


@pytest.fixture(scope="session")
@heavy
def digits_run(tmp_path_factory):
    """A classifier trained on digits 0-4 and its fingerprint, saved as a RUN (fixed seed)."""
    from edgefp import data

    return _saved_run(tmp_path_factory, "digits", data.load("digits:train:0-4"), seed=0)


@pytest.fixture(scope="session")
@heavy
def inverted_bundle(tmp_path_factory):
    """digits 0-4 inverted, trained as digits_run is (seed 0): the same task in a second domain, as an
    archive path (named digits04_inverted)."""
    from edgefp import data, shifts
    from edgefp.converter.convert import convert
    from edgefp.trainer import train

    train04 = data.load("digits:train:0-4")
    inverted = data.Dataset(shifts.apply(train04.x, "invert"), train04.y, "digits:train:0-4 inverted")
    root = tmp_path_factory.mktemp("inverted")
    train(inverted, seed=0, progress=False).save(str(root / "run"))
    convert(str(root / "run"), inverted, str(root / "digits04_inverted.efp"), name="digits04_inverted")
    return str(root / "digits04_inverted.efp")


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="session")
def digits_bundle(digits_run, tmp_path_factory):
    """The digits RUN converted to an int8 bundle, with unseen digits 5-9 as OOD data for the parity report."""
    from edgefp import data
    from edgefp.converter.convert import convert

    _, run_dir = digits_run
    out = str(tmp_path_factory.mktemp("bundle") / "digits04")
    manifest = convert(run_dir, data.load("digits:train:0-4"), out, ood_data=data.load("digits:test:5-9"))
    return manifest, out


@pytest.fixture(scope="session")
@heavy
def motions_run(tmp_path_factory):
    """A small sequence classifier (basic_motions, 6 channels, 30 epochs, fixed seed) and its fingerprint,
    saved as a RUN."""
    from edgefp import data

    return _saved_run(tmp_path_factory, "motions", data.load("basic_motions:train"), epochs=30, seed=0)


@pytest.fixture(scope="session")
def motions_bundle(motions_run, tmp_path_factory):
    """The motions RUN converted: the 1-D template, as an archive path."""
    from edgefp import data
    from edgefp.converter.convert import convert

    out = str(tmp_path_factory.mktemp("motions") / "motions.efp")
    convert(motions_run[1], data.load("basic_motions:train"), out)
    return out


def arrow_head_split():
    """arrow_head split as benchmarks/ood_quality.py's run with its first shape (class 0) unseen, seed 0:
    (training set, held-out x, unseen x)."""
    from benchmarks.ood_quality import pooled, split

    dataset = pooled("arrow_head")
    train_set, held_out, known = split(dataset, [1, 2], seed=0)
    return train_set, held_out.x, dataset.x[~known]


@pytest.fixture(scope="session")
@heavy
def arrow_head_run(tmp_path_factory):
    """A classifier trained on arrow_head's split (arrow_head_split, seed 0) and its fingerprint, saved as a RUN."""
    return _saved_run(tmp_path_factory, "arrow_head", arrow_head_split()[0], seed=0)


@pytest.fixture(scope="session")
def arrow_head_bundle(arrow_head_run, tmp_path_factory):
    """The arrow_head RUN converted (calibrated on its training set), as a bundle directory."""
    from edgefp.converter.convert import convert

    out = str(tmp_path_factory.mktemp("arrow_head") / "bundle")
    convert(arrow_head_run[1], arrow_head_split()[0], out)
    return out


def synthetic(shape, classes: int, n_train: int, n_test: int, scale: float = 1.0, seed: int = 0):
    """Learnable (train, test) data sets of samples of ``shape``: one smooth prototype per class
    (sinusoids per channel for sequences, low-pass noise for images, a random point for vectors)
    plus noise, times ``scale``."""
    from edgefp import data

    rng = np.random.default_rng(seed)
    if len(shape) == 2:
        t = np.linspace(0, 1, shape[0])[None, :, None]
        freq, phase = rng.uniform(0.5, 4, (2, classes, 1, shape[1]))
        protos = np.sin(2 * np.pi * (freq * t + phase))
    else:
        protos = rng.normal(size=(classes, *shape))
    if len(shape) == 3:
        low = (np.abs(np.fft.fftfreq(shape[0])) <= 0.2)[:, None, None] & (np.abs(np.fft.fftfreq(shape[1])) <= 0.2)[
            :, None
        ]
        protos = np.real(np.fft.ifft2(np.fft.fft2(protos, axes=(1, 2)) * low, axes=(1, 2)))
    protos /= np.maximum(protos.std(axis=tuple(range(1, protos.ndim)), keepdims=True), 1e-9)

    def draw(n: int, name: str):
        y = rng.permutation(np.arange(n) % classes)
        x = protos[y] + 0.6 * rng.normal(size=(n, *shape))
        return data.Dataset((scale * x).astype(np.float32), y.astype(np.int64), name)

    return draw(n_train, "train"), draw(n_test, "test")


def check_error_codes(device, archive: bytes, shape: tuple[int, ...]) -> None:
    """Bad requests get their error codes and the device keeps serving: the same for every device kind."""
    from edgefp.firmware_host.link import client, protocol
    from edgefp.firmware_host.link.client import DeviceError
    from edgefp.firmware_host.link.protocol import Msg

    with pytest.raises(DeviceError, match="NO_BUNDLE"):
        client.infer(device, np.zeros(shape, np.int8))
    client.flash(device, archive)
    with pytest.raises(DeviceError, match="BAD_INPUT_SHAPE: the input has 10 bytes") as error:
        client.infer(device, np.zeros(10, np.int8))
    assert str(error.value).startswith("device refused INFER:")
    with pytest.raises(DeviceError, match="UNKNOWN_TYPE"):
        device.request(0x55)
    with pytest.raises(DeviceError, match="BAD_LENGTH"):
        device.request(Msg.BENCH, b"\x01")
    with pytest.raises(DeviceError, match="OUT_OF_RANGE"):
        device.request(Msg.GET_OOD, struct.pack("<I", 99))
    with pytest.raises(DeviceError, match="BAD_STATE"):
        device.request(Msg.UPLOAD_CHUNK, struct.pack("<I", 0) + b"x")
    with pytest.raises(DeviceError, match="HASH_MISMATCH"):
        device.request(Msg.UPLOAD_BEGIN, protocol.pack_upload_begin(4, bytes(32), "x"))
        device.request(Msg.UPLOAD_CHUNK, struct.pack("<I", 0) + b"abcd")
        device.request(Msg.UPLOAD_END)
    device.max_frame = 1 << 16
    with pytest.raises(DeviceError, match="FRAME_TOO_LARGE"):
        device.request(Msg.INFER, bytes(range(1, 256)) * 40)
    device.port.write(os.urandom(3000) + b"\x00" + b"\x05" * 9000 + b"\x00")
    assert client.infer(device, np.zeros(shape, np.int8)).latency_us >= 0
    assert client.hello(device).active.sha256 == hashlib.sha256(archive).digest()


def edit_tflite(model: bytes, change) -> bytes:
    """A .tflite flatbuffer after ``change(model, subgraph, schema)`` edited its object form."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    change(m, m.subgraphs[0], schema)
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def upload(device, archive: bytes, sha: bytes | None = None, name: str = "x", upto: int | None = None):
    """Raw UPLOAD_BEGIN, every chunk and UPLOAD_END (the host's own checks of the archive bypassed):
    the slot the device verified the archive in. With ``upto``, only the chunks up to that many bytes,
    then nothing more (the host went away). ``sha`` defaults to the archive's own."""
    from edgefp.firmware_host.link import client, protocol
    from edgefp.firmware_host.link.protocol import Msg

    sha = hashlib.sha256(archive).digest() if sha is None else sha
    begin = protocol.pack_upload_begin(len(archive), sha, name)
    chunk = protocol.unpack("I", device.request(Msg.UPLOAD_BEGIN, begin))
    for offset in range(0, len(archive) if upto is None else upto, chunk):
        device.request(Msg.UPLOAD_CHUNK, struct.pack("<I", offset) + archive[offset : offset + chunk])
    return None if upto is not None else device.request(Msg.UPLOAD_END, timeout=client.SLOW_TIMEOUT)[0]


def edited_archive(manifest: dict, files: dict[str, bytes]) -> bytes:
    """The .efp bytes of a manifest (its digest computed again, as bundle.py does) and files, as someone
    editing a bundle by hand would write them: without the writer's checks."""
    import io
    import json
    import tarfile

    from edgefp.bundle import manifest_digest

    manifest = {**manifest, "digest": manifest_digest(manifest)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in [("manifest.json", json.dumps(manifest).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()
