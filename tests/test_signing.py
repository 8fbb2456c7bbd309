"""Signed bundles: keys, signatures that survive every way a bundle is copied, and devices (the agent and the
C firmware) that refuse whatever their owner did not sign, or signed earlier, and keep serving the last
good bundle. The firmware's Ed25519 (Monocypher with LibTomCrypt's SHA-512) is checked against
``cryptography`` on the same signatures and on damaged ones."""

import ctypes
import dataclasses
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefp.bundle import Bundle
from edgefp.cli import cli, main
from edgefp.errors import EdgefpError
from edgefp.firmware_host.device.agent import Agent, serving
from edgefp.firmware_host.device.fleet import AgentMember
from edgefp.firmware_host.firmware import third_party
from edgefp.firmware_host.link import client, mqtt
from edgefp.firmware_host.link.client import DeviceError
from edgefp.firmware_host.link.mqtt import local_broker, parse_broker
from edgefp.firmware_host.link.protocol import Msg
from edgefp.fleet import DEPLOYED, REFUSED, Controller, deploy
from edgefp.signing import SIGNATURE_FILE, Signature, generate_keys, key_id, load_private_key, load_public_key
from edgefp.wrap import wrap
from tests.cli.test_cli import edgefp
from tests.conftest import ROOT, upload

MODEL = os.path.join(ROOT, "tests", "data", "models", "tflm_hello_world_int8.tflite")
HAS_GCC = all(shutil.which(tool) for tool in ("gcc", "make"))
PEM = serialization.Encoding.PEM
needs_gcc = pytest.mark.skipif(not HAS_GCC, reason="building the firmware needs gcc and make")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The owner's key pair (always the same: the firmware that trusts it is built once, then cached) and
    someone else's."""
    root = tmp_path_factory.mktemp("keys")
    owner = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"edgefp test owner").digest())
    pem = owner.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = owner.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (root / "owner").mkdir()
    (root / "owner" / "signing.key").write_bytes(pem)
    (root / "owner" / "signing.pub").write_bytes(public)
    paths = {"private_key": str(root / "owner" / "signing.key"), "public_key": str(root / "owner" / "signing.pub")}
    return paths, generate_keys(str(root / "other"))


def tar(members: dict[str, bytes]) -> bytes:
    """An archive of these members, as anyone could write one (no writer's checks)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archives(keys, tmp_path_factory):
    """A small wrapped bundle signed and mis-signed every way, as archive bytes by name."""
    path = str(tmp_path_factory.mktemp("bundle") / "hello.efp")
    wrap(MODEL, path, name="hello")
    owner, other = (load_private_key(pair["private_key"]) for pair in keys)
    bundle = Bundle.load(path)
    found = {"unsigned": bundle.archive_bytes()}
    for version in (5, 10, 11):
        bundle.sign(owner, version)
        found[f"v{version}"] = bundle.archive_bytes()
    signed10 = Bundle.from_archive(found["v10"])
    bundle.sign(other, 12)
    found["other key"] = bundle.archive_bytes()
    manifest = signed10.manifest_bytes
    signature = Signature.unpack(signed10.signature)
    model = {"model.tflite": signed10.model_bytes}
    forged = dataclasses.replace(signature, value=other.sign(signed10.manifest_bytes))  # the owner's key id
    flipped = bytearray(signed10.signature)
    flipped[-1] ^= 1
    found["forged"] = tar({"manifest.json": manifest, SIGNATURE_FILE: forged.pack(), **model})
    found["flipped"] = tar({"manifest.json": manifest, SIGNATURE_FILE: bytes(flipped), **model})
    found["garbled"] = tar({"manifest.json": manifest, SIGNATURE_FILE: os.urandom(88), **model})
    found["truncated"] = tar({"manifest.json": manifest, SIGNATURE_FILE: signed10.signature[:-1], **model})
    renamed = Bundle(dataclasses.replace(signed10.manifest, name="renamed"), model)
    tampered = renamed.manifest_bytes  # its digest recomputed, as anyone editing a bundle can
    found["tampered"] = tar({"manifest.json": tampered, SIGNATURE_FILE: signed10.signature, **model})
    renamed.sign(owner, 10)
    found["v10 renamed"] = renamed.archive_bytes()
    return found


REFUSALS = {
    "unsigned": "BAD_SIGNATURE",
    "other key": "BAD_SIGNATURE",
    "forged": "BAD_SIGNATURE",
    "flipped": "BAD_SIGNATURE",
    "garbled": "BAD_SIGNATURE",
    "tampered": "BAD_SIGNATURE",
    "truncated": "INVALID_BUNDLE",
    "v5": "ROLLBACK",
    "v10 renamed": "ROLLBACK",
}


def serves(device, archive: bytes) -> None:
    """The device runs ``archive`` and answers an inference with it."""
    assert client.hello(device).active.sha256 == hashlib.sha256(archive).digest()
    assert client.infer(device, np.zeros(1, np.int8)).latency_us >= 0


def check_refusals(device, archives) -> None:
    """What a device that trusts the owner's key takes and refuses, the last good bundle serving throughout."""
    client.flash(device, archives["v10"])
    for name, code in REFUSALS.items():
        with pytest.raises(DeviceError, match=f"UPLOAD_END: {code}"):
            upload(device, archives[name])
        serves(device, archives["v10"])
    assert upload(device, archives["v10"]) in (0, 1)  # the same signed bundle again: taken
    client.flash(device, archives["v11"])
    with pytest.raises(DeviceError, match="ACTIVATE: ROLLBACK"):  # still verified in the other slot
        device.request(Msg.ACTIVATE, hashlib.sha256(archives["v10"]).digest())
    serves(device, archives["v11"])


def test_an_agent_that_trusts_a_key_refuses_what_its_owner_did_not_sign(tmp_path, keys, archives):
    trusted = load_public_key(keys[0]["public_key"])
    with serving(Agent(str(tmp_path), "pi", trust=trusted), "tcp") as url, client.open_device(url) as device:
        check_refusals(device, archives)
    state = json.loads((tmp_path / "signed.json").read_text())
    assert state["version"] == 11
    with serving(Agent(str(tmp_path), "pi", trust=trusted)) as url, client.open_device(url) as device:
        serves(device, archives["v11"])  # after a restart, the newest serves and older ones stay refused
        with pytest.raises(DeviceError, match="ROLLBACK: the bundle is version 10; this device runs version 11"):
            upload(device, archives["v10"])
    sim = subprocess.Popen(
        [sys.executable, "-m", "edgefp", "sim", "--tcp", "--trust", keys[0]["public_key"]],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with client.open_device(sim.stdout.readline().strip()) as device:  # a simulated board trusts it too
            with pytest.raises(DeviceError, match="UPLOAD_END: BAD_SIGNATURE"):
                client.flash(device, archives["unsigned"])
            client.flash(device, archives["v10"])
    finally:
        sim.terminate()
        sim.wait(10)
    with serving(Agent(str(tmp_path / "open"), "pi")) as url, client.open_device(url) as device:
        for name in ("unsigned", "other key", "v5"):  # a device without a key takes any intact bundle
            client.flash(device, archives[name])
            serves(device, archives[name])


@pytest.mark.heavy
@needs_gcc
def test_the_firmware_that_trusts_a_key_refuses_the_same(tmp_path, keys, archives):
    from edgefp.firmware_host.firmware.build import Options, build
    from edgefp.firmware_host.firmware.launch import start

    trusted, flash = load_public_key(keys[0]["public_key"]), str(tmp_path / "flash.bin")
    with start("native", trust=trusted, flash_file=flash) as chip, client.open_device(chip.url) as device:
        check_refusals(device, archives)
    built = build("native", cflags=Options(trust=trusted).cflags()).parent / "obj-host" / "src" / "signature.o"
    listed = subprocess.run(["nm", "-g", "--defined-only", str(built)], capture_output=True, text=True, check=True)
    exported = {line.split()[-1] for line in listed.stdout.splitlines() if len(line.split()) == 3}
    assert exported == {"efp_signature_check", "efp_ed25519_check"}  # Monocypher's and SHA-512's are local
    with start("native", trust=trusted, flash_file=flash) as chip, client.open_device(chip.url) as device:
        serves(device, archives["v11"])
        with pytest.raises(DeviceError, match="ROLLBACK"):
            upload(device, archives["v10"])
    with start("native", flash_file=str(tmp_path / "open.bin")) as chip, client.open_device(chip.url) as device:
        client.flash(device, archives["other key"])
        serves(device, archives["other key"])


def test_a_signature_survives_rewriting_and_goes_with_a_changed_manifest(tmp_path, archives):
    signed = Bundle.from_archive(archives["v10"])
    signed.write(str(tmp_path / "dir"))
    again = Bundle.load(str(tmp_path / "dir"))
    assert again.signature == signed.signature and again.archive_bytes() == archives["v10"]
    again.manifest = dataclasses.replace(again.manifest, name="changed")
    assert again.signature is None and SIGNATURE_FILE.encode() not in again.archive_bytes()


def test_keys_and_signing_through_the_cli(tmp_path, keys):
    out = tmp_path / "keys"
    made = edgefp("keys", "generate", "--out", str(out), "--json")
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(os.stat(out / "signing.key").st_mode) == 0o600
    assert json.loads(made.stdout)["key_id"] == key_id(load_public_key(str(out / "signing.pub"))).hex()
    again = edgefp("keys", "generate", "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr
    bundle = str(tmp_path / "hello.efp")
    wrap(MODEL, bundle)
    first = json.loads(edgefp("sign", bundle, "--key", str(out / "signing.key"), "--json").stdout)
    second = json.loads(edgefp("sign", bundle, "--key", str(out / "signing.key"), "--json").stdout)
    assert second["version"] > first["version"] and Bundle.load(bundle).signature is not None
    assert edgefp("sign", bundle, "--key", str(out / "signing.key"), "--version", "3").returncode == 0
    assert Signature.unpack(Bundle.load(bundle).signature).version == 3


def test_export_firmware_builds_the_key_in(tmp_path, keys, capsys):
    out = tmp_path / "fw"
    with pytest.raises(SystemExit) as exited:
        main(["export-firmware", "--board", "qemu-m4", "--out", str(out), "--trust", keys[0]["public_key"]])
    assert exited.value.code == 0
    trusted = load_public_key(keys[0]["public_key"])
    assert "-DEFP_TRUST_KEY=" + ",".join(f"0x{b:02x}" for b in trusted) in (out / "board.mk").read_text()
    assert (out / "third_party" / "pins.json").is_file() and (out / "third_party" / "monocypher").is_dir()
    assert f"signed with key {key_id(trusted).hex()}" in capsys.readouterr().out
    bad = ["export-firmware", "--board", "qemu-m4", "--out", str(tmp_path / "fw2"), "--trust", keys[0]["private_key"]]
    assert "not a public key" in one_line_error(capsys, bad) and not (tmp_path / "fw2").exists()


def _bad_keys(tmp_path, keys):
    p256 = ec.generate_private_key(ec.SECP256R1())
    pem = p256.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "p256.key").write_bytes(pem)
    (tmp_path / "garbled.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    return {
        "missing": (str(tmp_path / "none.key"), "cannot read"),
        "garbled": (str(tmp_path / "garbled.key"), "not a"),
        "another algorithm": (str(tmp_path / "p256.key"), "not an Ed25519"),
        "the other half": (keys[0]["public_key"], "it is a public key"),
    }


def one_line_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1 and lines[0].startswith("edgefp: error:"), (args, lines)
    return lines[0]


def test_bad_key_files_are_one_line_and_exit_2(tmp_path, keys, capsys):
    bundle = str(tmp_path / "hello.efp")
    wrap(MODEL, bundle)
    before = open(bundle, "rb").read()
    for what, (path, message) in _bad_keys(tmp_path, keys).items():
        convert = ["convert", "run", "--calib", "digits", "--out", str(tmp_path / "x"), "--sign", path]
        for args in (["sign", bundle, "--key", path], convert):
            assert message in one_line_error(capsys, args), what
    assert open(bundle, "rb").read() == before and not os.path.exists(tmp_path / "x")  # nothing signed, nothing lost
    trust = ["agent", "--data-dir", str(tmp_path / "d"), "--tcp", "127.0.0.1:0", "--trust"]
    assert "not a public key (it is a private key" in one_line_error(capsys, [*trust, keys[0]["private_key"]])
    assert "not a public key" in one_line_error(capsys, [*trust, bundle])


def test_repo_add_and_select_deploy_keep_the_signature(tmp_path, keys, digits_bundle, capsys):
    from edgefp.repository import Repository

    signed = str(tmp_path / "digits04.efp")
    Bundle.load(digits_bundle[1]).write(signed)
    assert edgefp("sign", signed, "--key", keys[0]["private_key"]).returncode == 0
    with pytest.raises(SystemExit):
        main(["inspect", signed, "--json"])
    shown = json.loads(capsys.readouterr().out)["signature"]
    assert shown["key_id"] == key_id(load_public_key(keys[0]["public_key"])).hex() and shown["version"] > 1
    repo = Repository(str(tmp_path / "repo"))
    repo.add(signed, {"task": "digits"})
    assert repo.load(repo.entry("digits04")).signature == Bundle.load(signed).signature
    target = str(tmp_path / "target.npz")
    from edgefp import data

    np.savez(target, x=data.load("digits:test:0-4").x[:50])
    agent = Agent(str(tmp_path / "device"), "pi", trust=load_public_key(keys[0]["public_key"]))
    with serving(agent, "tcp") as url:
        result = CliRunner().invoke(cli, ["select", "--repo", repo.root, "--data", target, "--deploy", url, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["deployed"]
        assert agent.active.bundle.manifest.name == "digits04" and agent.active.signature is not None


# ------------------------------------------------------------------ the firmware's Ed25519 against cryptography
RFC8032_TEST_1 = (  # RFC 8032, 7.1, TEST 1: public key, message (empty), signature
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    "",
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
)
ORDER = 2**252 + 27742317777372353535851937790883648493  # L, the group order


@pytest.fixture(scope="module")
def firmware_ed25519(tmp_path_factory):
    """efp_ed25519_check of the firmware's sources, built for this machine."""
    source = third_party.DIR.parent
    out = str(tmp_path_factory.mktemp("ed25519") / "libed25519.so")
    units = [source / "src" / "signature.c", source / "src" / "sha256.c", *sorted(third_party.DIR.glob("*/*.c"))]
    includes = [f"-I{path}" for path in (source / "src", *sorted(p for p in third_party.DIR.iterdir() if p.is_dir()))]
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-w", *includes, *map(str, units), "-o", out], check=True)
    library = ctypes.CDLL(out)
    library.efp_ed25519_check.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32]
    return lambda sig, key, message: library.efp_ed25519_check(sig, key, message, len(message)) == 0


def python_ed25519(sig: bytes, key: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(sig, message)
    except Exception:  # noqa: BLE001 - invalid signature or a key that is not a point
        return False
    return True


@pytest.mark.heavy
@needs_gcc
def test_the_firmware_verifies_ed25519_as_cryptography_does(firmware_ed25519):
    key, message, sig = (bytes.fromhex(value) for value in RFC8032_TEST_1)
    assert firmware_ed25519(sig, key, message) and python_ed25519(sig, key, message)
    rng = np.random.default_rng(0)
    for length in range(0, 65, 4):
        private = Ed25519PrivateKey.generate()
        key = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        message = rng.bytes(length)
        sig = private.sign(message)
        assert firmware_ed25519(sig, key, message)
        s = int.from_bytes(sig[32:], "little") + ORDER  # the same signature with S not reduced: refused by both
        cases = [(sig[:32] + s.to_bytes(32, "little"), key, message)] if s < 2**256 else []
        for _ in range(6):  # one byte changed in the signature, the key or the message
            which = int(rng.integers(3 if length else 2))
            parts = [bytearray(sig), bytearray(key), bytearray(message)]
            at = int(rng.integers(len(parts[which])))
            parts[which][at] ^= 1 << int(rng.integers(8))
            cases.append(tuple(bytes(part) for part in parts))
        for case in cases:
            assert firmware_ed25519(*case) == python_ed25519(*case) == False  # noqa: E712
    assert not firmware_ed25519(sig, key, bytes(65))  # longer than a signed message: refused, not read past


def test_the_vendored_sources_are_the_pinned_ones(tmp_path, monkeypatch):
    third_party.check()
    copy = tmp_path / "third_party"
    shutil.copytree(third_party.DIR, copy)
    (copy / "monocypher" / "monocypher.c").write_text("/* changed */")
    monkeypatch.setattr(third_party, "DIR", copy)
    with pytest.raises(EdgefpError, match="monocypher.c is not the file pinned"):
        third_party.check()


@pytest.mark.skipif(not mqtt.mosquitto(), reason="needs mosquitto (make firmware-tools)")
def test_a_fleet_deploy_meets_the_same_check(tmp_path, keys, archives):
    """A deploy through the broker installs through the agent's own upload: the same refusals."""
    agent = Agent(str(tmp_path / "pi-1"), "pi", trust=load_public_key(keys[0]["public_key"]))
    stop = threading.Event()
    with local_broker() as url:
        member = AgentMember(agent, parse_broker(url), "pi-1", {"site": "lab"}, status_s=0.2)
        thread = threading.Thread(target=member.run, args=(stop,), daemon=True)
        thread.start()
        try:
            with Controller(parse_broker(url)) as controller:
                deadline = time.monotonic() + 10
                while not controller.devices() and time.monotonic() < deadline:
                    time.sleep(0.05)
                results = [deploy(controller, archives[name], {"site": "lab"})[0] for name in ("unsigned", "v10", "v5")]
        finally:
            stop.set()
            thread.join(10)
    assert [(r["result"], r.get("error")) for r in results] == [
        (REFUSED, "BAD_SIGNATURE"),
        (DEPLOYED, None),
        (REFUSED, "ROLLBACK"),
    ]
    assert agent.active.bundle.archive_bytes() == archives["v10"]
