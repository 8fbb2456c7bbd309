"""Crafted bundles and data files: refused with one line by every command that reads them (inspect, score,
flash, repo add, export-c), by the agent and by the firmware, in bounded memory, and the device keeps
serving its last good bundle."""

import contextlib
import gzip
import io
import json
import lzma
import os
import resource
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib

import numpy as np
import pytest

from edgefp import data
from edgefp.bundle import Bundle
from edgefp.cli import main
from edgefp.errors import EdgefpError
from edgefp.firmware_host.device.agent import Agent, serving
from edgefp.firmware_host.firmware.build import build
from edgefp.firmware_host.firmware.launch import start_native
from edgefp.firmware_host.link import client
from edgefp.firmware_host.link.client import DeviceError
from edgefp.wrap import wrap
from tests.conftest import edited_archive, upload
from tests.firmware.test_build import HAS_NATIVE
from tests.test_wrap import MODELS

GIB = 1 << 30


def tar(members: list[tuple], fmt=tarfile.PAX_FORMAT) -> bytes:
    """An uncompressed tar of (name, content) or (TarInfo, content) members, in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for info, content in members:
            if isinstance(info, str):
                info = tarfile.TarInfo(info)
                info.size = len(content)
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def with_manifest(bundle: Bundle, change) -> bytes:
    """The bundle's archive after ``change(manifest)``, its digest computed again as bundle.py does."""
    manifest = bundle.manifest.to_json()
    change(manifest)
    return edited_archive(manifest, bundle.files)


def edited(bundle: Bundle, path: str, value) -> bytes:
    """The bundle's archive with the manifest's field at ``path`` (keys and list indices joined by /) set
    to ``value``, or removed when ``value`` is KeyError."""

    def change(manifest):
        *parents, last = path.split("/")
        target = manifest
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value

    return with_manifest(bundle, change)


def nested(depth: int):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


def header_claiming(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(tarfile.USTAR_FORMAT)


def link(name: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, "/etc/passwd"
    return info


def crafted(bundle: Bundle) -> dict[str, tuple[bytes, str]]:
    """case -> (archive bytes, what the refusal says)."""
    manifest = json.dumps(bundle.manifest.to_json()).encode()
    model = bundle.model_bytes
    good = bundle.archive_bytes()
    huge_manifest = {**bundle.manifest.to_json(), "padding": "x" * (5 << 20)}
    long_name = tarfile.TarInfo("a" * 120)
    long_name.size = 1

    def edit(path: str, value):
        return edited(bundle, path, value)

    return {
        "gzip-compressed": (gzip.compress(good), "a gzip-compressed archive"),
        "xz-compressed": (lzma.compress(good), "a xz-compressed archive"),
        "member past the end": (header_claiming("model.tflite", 3 * GIB) + bytes(512), "runs past the end"),
        "member twice": (tar([("manifest.json", manifest), ("model.tflite", model), ("model.tflite", model)]), "twice"),
        "manifest twice": (tar([("manifest.json", manifest), ("model.tflite", model), ("manifest.json", b"{}")]),
                           "twice"),
        "symlink": (tar([("manifest.json", manifest), (link("model.tflite"), None)]), "unexpected entry"),
        "hard link": (tar([("manifest.json", manifest), (link("x", tarfile.LNKTYPE), None)]), "unexpected entry"),
        "directory": (tar([("manifest.json", manifest), (link("d", tarfile.DIRTYPE), None)]), "unexpected entry"),
        "path": (tar([("manifest.json", manifest), ("../model.tflite", model)]), "unexpected entry"),
        "hidden": (tar([("manifest.json", manifest), (".model.tflite", model)]), "unexpected entry"),
        "long name": (tar([("manifest.json", manifest), (long_name, b"x")], tarfile.GNU_FORMAT), "unexpected entry"),
        "many files": (tar([("manifest.json", manifest)] + [(f"f{i}", b"") for i in range(12)]), "more than 10 files"),
        "huge manifest": (tar([("manifest.json", json.dumps(huge_manifest).encode()), ("model.tflite", model)]),
                          "more than 4194304"),
        "not a tar": (os.urandom(2048), "damaged tar header"),
        "no manifest": (tar([("model.tflite", model)]), "no manifest.json"),
        "files empty list": (edit("files", []), "files must be an object"),
        "files 3 GiB": (edit("files/model.tflite", {"sha256": "0" * 64, "bytes": 3 * GIB}), "bytes must be an integer"),
        "deep nesting": (edit("parity", nested(40)), "nested more than 16 deep"),
        "very deep nesting": (tar([("manifest.json", b"[" * 200000 + b"]" * 200000)]), "nested too deeply"),
        "no labels": (edit("labels", KeyError), "labels must be a list"),
        "empty labels": (edit("labels", []), "labels must be a list of 1 to 255 entries"),
        "string threshold": (edit("score/threshold_units", "215658"), "threshold_units must be an integer"),
        "string display threshold": (edit("score/threshold", "1.0"), "score.threshold must be a number below 1e308"),
        "huge number": (edit("layers/0/z_mean", 10**308), "z_mean must be a number below 1e308"),
        "unknown evidence": (edit("layers/0/kind", "distance"), "kind must be 'autoencoder' or 'max_logit'"),
        "unknown transform": (edit("layers/1/transform", "exp"), "transform must be 'log' or 'negate'"),
        "whole weight": (edit("layers/0/weight", 1.0), "weight must be below 1"),
        "no z_std": (edit("layers/0/z_std", KeyError), "z_std must be a number"),
        "input scale 0": (edit("input/scale", 0), "input.scale must be a positive number"),
        "zero point 300": (edit("outputs/probs/zero_point", 300), "zero_point must be an integer from -128 to 127"),
        "model missing": (edit("model", "other.tflite"), "model must be a file listed in files"),
        "short z_table": (edit("layers/0/z_table", [0] * 255), "z_table must be a list of 256 to 512 entries"),
        "one scale's z_table": (edit("layers/0/z_table", [0] * 256), "z_table must be a list of 512 entries"),
        "error at 3 scales": (edit("outputs/layer_errors/0/shape", [3]), "shape must be a shape of 1 to 2 elements"),
        "no coarse factor": (edit("outputs/layer_errors/0/coarse_factor", KeyError), "coarse_factor must be a number"),
        "coarse factor 500": (edit("outputs/layer_errors/0/coarse_factor", 500), "coarse_factor must be from 1 to 127"),
        "max logit at 2 scales": (edit(f"outputs/layer_errors/{len(bundle.manifest.layers) - 1}/shape", [2]),
                                  "shape must be a shape of 1 elements"),
        "negative arena": (edit("tflm_arena_bytes", -5), "tflm_arena_bytes must be an integer"),
        "repeated key": (tar([("manifest.json", manifest[:-1] + b', "name": "other"}'), ("model.tflite", model)]),
                         "repeats a key"),
        "input 7x7": (edit("input/shape", [7, 7, 1]), "the model takes int8 (8, 8, 1)"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def bundle(digits_bundle):
    return Bundle.load(digits_bundle[1])


@pytest.fixture(scope="module")
def cases(bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("crafted")
    found = {}
    for case, (content, message) in crafted(bundle).items():
        path = root / (case.replace(" ", "_") + ".efp")
        path.write_bytes(content)
        found[case] = (str(path), content, message)
    return found


def run_cli(*args) -> tuple[int, str]:
    """``edgefp ARGS`` in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(arg) for arg in args])
        except SystemExit as exc:
            return exc.code, err.getvalue()
    return 0, err.getvalue()


def test_crafted_bundles_are_refused_by_every_command(cases, bundle, tmp_path):
    device = Agent(str(tmp_path / "device"), "pi")
    with serving(device, "tcp") as url:
        with client.open_device(url) as link:
            client.flash(link, bundle.archive_bytes())
        for case, (path, _, message) in cases.items():
            commands = {
                "inspect": ["inspect", path],
                "score": ["score", path, "--data", "digits:test:0-4"],
                "flash": ["flash", path, "--port", url],
                "repo add": ["repo", "add", path, "--repo", tmp_path / "repo"],
                "export-c": ["export-c", path, "--out", tmp_path / "c"],
            }
            for command, args in commands.items():
                if case == "input 7x7" and command not in ("score", "flash"):
                    continue  # the manifest itself is well formed: the model says otherwise
                code, err = run_cli(*args)
                last = err.strip().splitlines()[-1]  # flash shows its progress line first
                assert code == 2 and last.startswith("edgefp: error: ") and message in last, f"{case}, {command}: {err}"
                assert "Traceback" not in err
        with client.open_device(url) as link:
            assert client.hello(link).active.name == "digits04"
    assert not (tmp_path / "c").exists() and not (tmp_path / "repo").exists()


def test_devices_refuse_crafted_uploads_and_keep_serving(cases, bundle, tmp_path):
    devices = {"agent": lambda: serving(Agent(str(tmp_path / "device"), "nrf52840"))}
    if HAS_NATIVE:
        devices["firmware"] = lambda: start_native(build("native"), str(tmp_path / "flash.bin"))
    x_q = bundle.quantize(data.load("digits:test:0-4").x[:3])
    for kind, start in devices.items():
        with start() as running:
            url = running if isinstance(running, str) else running.url
            with client.open_device(url) as device:
                client.flash(device, bundle.archive_bytes())
                expected = [client.infer(device, x).errors.tolist() for x in x_q]
                for case, (_, content, _) in cases.items():
                    if len(content) > 1 << 20 and kind == "firmware":
                        with pytest.raises(DeviceError, match="DOES_NOT_FIT"):
                            upload(device, content)
                        continue
                    with pytest.raises(DeviceError, match="INVALID_BUNDLE|DOES_NOT_FIT") as refused:
                        slot = upload(device, content)
                        device.request(0x13, __import__("hashlib").sha256(content).digest())
                    assert str(refused.value).count("\n") == 0, (kind, case)
                    assert client.hello(device).active.name == "digits04", (kind, case, slot)
                assert [client.infer(device, x).errors.tolist() for x in x_q] == expected


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory):
    """A model wrapped without a fingerprint (TFLite Micro's hello_world) and int8 inputs for it."""
    root = tmp_path_factory.mktemp("wrapped")
    wrap(os.path.join(MODELS, "tflm_hello_world_int8.tflite"), str(root / "hello.efp"))
    np.savez(root / "x.npz", x=np.arange(-128, 128, 16, dtype=np.int8).reshape(-1, 1))
    return Bundle.load(str(root / "hello.efp")), str(root / "x.npz")


def wrapped_cases(bundle: Bundle) -> dict[str, tuple[bytes, str]]:
    """case -> (archive bytes, what the refusal says) for a bundle without a fingerprint."""
    raw = bundle.manifest.to_json()["outputs"]["raw"]
    standardized = {"type": "standardize", "mean": [0.0], "std": [1.0]}
    return {
        "no layers": (edited(bundle, "layers", KeyError), "layers must be a list"),
        "a score": (edited(bundle, "score", {"threshold": 1.0}), "score must be null"),
        "no raw outputs": (edited(bundle, "outputs/raw", []), "outputs.raw must be a list of 1 to 16 entries"),
        "outputs out of order": (edited(bundle, "outputs/raw/0/index", 1), "outputs.raw[0].index must be 0"),
        "float64 output": (edited(bundle, "outputs/raw/0/dtype", "float64"), "outputs.raw[0].dtype must be"),
        "zero-sized output": (edited(bundle, "outputs/raw/0/shape", [0]), "shape[0] must be an integer"),
        "int16 input": (edited(bundle, "input/dtype", "int16"), "input.dtype must be 'int8' or 'float32'"),
        "standardised input": (edited(bundle, "input/preprocessing", standardized), "type must be 'none'"),
        "string label value": (edited(bundle, "labels", [{"value": "0", "name": "a"}]), "labels[0].value must be"),
        "output of 3 values": (edited(bundle, "outputs/raw/0/shape", [3]), "not a int8 output of 3 values"),
        "float output": (edited(bundle, "outputs/raw/0/dtype", "float32"), "not a float32 output"),
        "an output too many": (edited(bundle, "outputs/raw", [*raw, {**raw[0], "index": 1}]), "the manifest lists 2"),
        "float input": (edited(bundle, "input/dtype", "float32"), "float32"),
    }


@pytest.mark.heavy
def test_crafted_wrapped_bundles_are_refused_alike_by_the_host_and_the_devices(wrapped, tmp_path):
    bundle, x = wrapped
    with_labels = edited(bundle, "labels", [{"value": 0, "name": "sine"}])  # labels are optional, not refused
    devices = {"agent": lambda: serving(Agent(str(tmp_path / "device"), "nrf52840"))}
    if HAS_NATIVE:
        devices["firmware"] = lambda: start_native(build("native"), str(tmp_path / "flash.bin"))
    for case, (content, message) in wrapped_cases(bundle).items():
        path = tmp_path / "case.efp"
        path.write_bytes(content)
        code, err = run_cli("score", path, "--data", x, "--runtime", "tflm")
        assert code == 2 and err.startswith("edgefp: error: ") and message in err, (case, err)
        assert err.count("\n") == 1, (case, err)
    for kind, start in devices.items():
        with start() as running, client.open_device(running if isinstance(running, str) else running.url) as device:
            client.flash(device, with_labels)
            client.flash(device, bundle.archive_bytes())
            sample, raw = np.zeros(1, np.int8), bundle.manifest.outputs.raw
            expected = [output.tolist() for output in client.infer_outputs(device, sample, raw)[0]]
            for case, (content, _) in wrapped_cases(bundle).items():
                with pytest.raises(DeviceError, match="INVALID_BUNDLE") as refused:
                    upload(device, content)
                assert str(refused.value).count("\n") == 0, (kind, case)
            assert client.hello(device).active.name == bundle.manifest.name, kind
            assert [output.tolist() for output in client.infer_outputs(device, sample, raw)[0]] == expected, kind


@pytest.fixture(scope="module")
def gzip_bomb(bundle, tmp_path_factory):
    """A gzip-compressed tar of about 2 MB whose model member unpacks to 512 MiB."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.efp"
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    with open(path, "wb") as out:
        out.write(compressor.compress(tar([("manifest.json", json.dumps(bundle.manifest.to_json()).encode())])[:-1024]))
        out.write(compressor.compress(header_claiming("model.tflite", GIB // 2)))
        block = bytes(1 << 24)
        for _ in range(GIB // 2 // len(block)):
            out.write(compressor.compress(block))
        out.write(compressor.compress(bytes(1024)) + compressor.flush())
    return str(path)


def test_a_compressed_bomb_is_refused_in_bounded_memory(gzip_bomb):
    assert os.path.getsize(gzip_bomb) < 4 << 20

    def limit_memory():  # inspect itself takes less than 400 MiB of address space
        resource.setrlimit(resource.RLIMIT_AS, (GIB // 2, GIB // 2))

    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "edgefp", "inspect", gzip_bomb],
        capture_output=True,
        text=True,
        preexec_fn=limit_memory,
        timeout=120,
    )
    assert result.returncode == 2 and "gzip-compressed archive" in result.stderr, result.stderr
    assert time.monotonic() - started < 10


def npz_claiming(path, shape, data_bytes: int, level: int = 9) -> str:
    """An .npz whose one array declares ``shape`` (float32) and holds ``data_bytes`` zeros, deflated."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            for _ in range(data_bytes >> 20):
                member.write(bytes(1 << 20))
    return str(path)


def test_a_zip_bomb_of_data_is_refused_before_it_unpacks(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_NPZ_BYTES", 64 << 20)  # the mechanism at a small scale: 2 GiB by default
    bomb = npz_claiming(tmp_path / "bomb.npz", (24 << 20,), 96 << 20)
    assert os.path.getsize(bomb) < 200 << 10
    with pytest.raises(EdgefpError, match="its arrays take 0.1 GiB unpacked, more than edgefp reads"):
        data.load(bomb)
    liar = npz_claiming(tmp_path / "liar.npz", (1 << 40,), 1 << 20)  # the array header claims more than is there
    with pytest.raises(EdgefpError, match="its arrays take 4096.0 GiB unpacked"):
        data.load(liar)
    fine = npz_claiming(tmp_path / "fine.npz", (1 << 18, 4), 4 << 20)
    assert data.load(fine).x.shape == (1 << 18, 4)
