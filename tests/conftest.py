import hashlib
import os
import struct

import numpy as np
import pytest

DATASETS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")
KEY = b"a-shared-key-of-32-bytes-length!"  # for agents that require AUTH


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A classifier trained on digits 0-4 and its fingerprint, saved as a RUN (fixed seed)."""
    from edgefp import data
    from edgefp.trainer import train

    fingerprint = train(data.load("digits:train:0-4"), seed=0, progress=False)
    run_dir = str(tmp_path_factory.mktemp("digits") / "run")
    fingerprint.save(run_dir)
    return fingerprint, run_dir


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
def motions_bundle(tmp_path_factory):
    """A small sequence bundle (basic_motions, 30 epochs, fixed seed): the 1-D template, as an archive path."""
    from edgefp import data
    from edgefp.converter.convert import convert
    from edgefp.trainer import train

    dataset = data.load(os.path.join(DATASETS, "basic_motions.npz") + ":train")
    fingerprint = train(dataset, epochs=30, seed=0, progress=False)
    root = tmp_path_factory.mktemp("motions")
    fingerprint.save(str(root / "run"))
    convert(str(root / "run"), dataset, str(root / "motions.efp"))
    return str(root / "motions.efp")


def check_error_codes(device, archive: bytes, shape: tuple[int, ...]) -> None:
    """Bad requests get their error codes and the device keeps serving: the same for every device kind."""
    from edgefp.firmware_host import client, protocol
    from edgefp.firmware_host.client import DeviceError
    from edgefp.firmware_host.protocol import Msg

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
    from edgefp.firmware_host import client, protocol
    from edgefp.firmware_host.protocol import Msg

    sha = hashlib.sha256(archive).digest() if sha is None else sha
    begin = protocol.pack_upload_begin(len(archive), sha, name)
    chunk = protocol.unpack("I", device.request(Msg.UPLOAD_BEGIN, begin))
    for offset in range(0, len(archive) if upto is None else upto, chunk):
        device.request(Msg.UPLOAD_CHUNK, struct.pack("<I", offset) + archive[offset : offset + chunk])
    return None if upto is not None else device.request(Msg.UPLOAD_END, timeout=client.SLOW_TIMEOUT)[0]
