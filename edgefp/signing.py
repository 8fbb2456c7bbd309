"""Signed bundles (docs/security.md, "Signed bundles"): Ed25519 keys, the signature a bundle carries, and
the check a device provisioned with a public key applies before it accepts a bundle.

A signature is the bundle member ``manifest.sig`` (``SIGNATURE_BYTES`` bytes, not listed in the manifest,
which it signs): ``MAGIC``, the version (uint64, little-endian), the key id (the first 8 bytes of the
SHA-256 of the raw public key), then the Ed25519 signature of those 24 bytes followed by the SHA-256 of
``manifest.json`` exactly as the bundle holds it. The manifest lists every other file with its SHA-256,
so the signature covers the whole bundle, and a microcontroller checks it with one SHA-256 of the bytes
it received (it cannot recompute the manifest's canonical ``digest``). A device keeps the version and
manifest hash of the last signed bundle it activated and refuses an older version, or the same version
with another manifest (rollback protection).
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from dataclasses import dataclass

from edgefp.errors import EdgefpError

SIGNATURE_FILE = "manifest.sig"
MAGIC = b"EFPSIG1\0"
SIGNATURE_BYTES = 88
PRIVATE_KEY_FILE, PUBLIC_KEY_FILE = "signing.key", "signing.pub"
MAX_VERSION = (1 << 64) - 1
_HEADER = struct.Struct("<8sQ8s")


class SignatureError(EdgefpError):
    """A bundle that a device provisioned with a public key refuses: unsigned, or not signed by that key."""


class RollbackError(EdgefpError):
    """A correctly signed bundle older than the one a device accepted last."""


@dataclass(frozen=True)
class Signature:
    """A bundle's signature: the version it was signed as, the signer's key id and the Ed25519 signature."""

    version: int
    key_id: bytes
    value: bytes

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, self.version, self.key_id) + self.value

    @classmethod
    def unpack(cls, content: bytes) -> Signature:
        if len(content) != SIGNATURE_BYTES or not content.startswith(MAGIC):
            raise SignatureError(f"{SIGNATURE_FILE} is not an edgefp signature ({len(content)} bytes); sign it again")
        _, version, key_id = _HEADER.unpack_from(content)
        return cls(version, key_id, content[_HEADER.size :])


def key_id(public_raw: bytes) -> bytes:
    return hashlib.sha256(public_raw).digest()[:8]


def signed_message(version: int, signer: bytes, manifest_bytes: bytes) -> bytes:
    """What the Ed25519 signature covers (56 bytes)."""
    return _HEADER.pack(MAGIC, version, signer) + hashlib.sha256(manifest_bytes).digest()


# ------------------------------------------------------------------------------------------- keys
def generate_keys(out: str, *, force: bool = False) -> dict:
    """Write a new key pair: ``out/signing.key`` (PKCS #8 PEM, readable by its owner only) and
    ``out/signing.pub`` (SubjectPublicKeyInfo PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path, public_path = os.path.join(out, PRIVATE_KEY_FILE), os.path.join(out, PUBLIC_KEY_FILE)
    existing = [path for path in (private_path, public_path) if os.path.exists(path)]
    if existing and not force:
        raise EdgefpError(f"{existing[0]} exists; a new key replaces it only with --force (devices trust the old one)")
    os.makedirs(out, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for path, content, mode in ((private_path, private, 0o600), (public_path, public, 0o644)):
        tmp = f"{path}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)
    raw = public_raw(key.public_key())
    return {"private_key": private_path, "public_key": public_path, "key_id": key_id(raw).hex()}


def public_raw(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(64 * 1024)
    except OSError as exc:
        reason = exc.strerror or exc
        raise EdgefpError(f"{path}: cannot read the {what} ({reason}); make one with 'edgefp keys generate'") from None


def load_private_key(path: str):
    """The Ed25519 private key in a PEM file written by :func:`generate_keys`, or one clear EdgefpError."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    content = _read_pem(path, "signing key")
    try:
        key = serialization.load_pem_private_key(content, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        hint = "it is a public key: sign with signing.key" if b"PUBLIC KEY" in content else str(exc).split("\n")[0]
        raise EdgefpError(
            f"{path}: not a signing key ({hint}); give the signing.key 'edgefp keys generate' wrote"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        kind = type(key).__name__.lstrip("_")
        raise EdgefpError(f"{path}: not an Ed25519 key but {kind}; make one with 'edgefp keys generate'")
    return key


def load_public_key(path: str) -> bytes:
    """The raw 32 bytes of the Ed25519 public key in a PEM file (``signing.pub``), or one clear EdgefpError."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    content = _read_pem(path, "public key")
    try:
        key = serialization.load_pem_public_key(content)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        hint = "it is a private key: give signing.pub" if b"PRIVATE KEY" in content else str(exc).split("\n")[0]
        raise EdgefpError(
            f"{path}: not a public key ({hint}); give the signing.pub 'edgefp keys generate' wrote"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise EdgefpError(f"{path}: not an Ed25519 public key but {type(key).__name__.lstrip('_')}")
    return public_raw(key)


# --------------------------------------------------------------------------------- sign and check
def sign_manifest(manifest_bytes: bytes, private_key, version: int) -> Signature:
    """The signature of a manifest (as the bundle holds its bytes) at ``version``."""
    if not 1 <= version <= MAX_VERSION:
        raise EdgefpError(f"version {version} is out of range (1 to 2^64-1)")
    signer = key_id(public_raw(private_key.public_key()))
    return Signature(version, signer, private_key.sign(signed_message(version, signer, manifest_bytes)))


def next_version(latest: int = 0) -> int:
    """The version a new signature gets: the time in seconds (so that versions grow without a counter to
    keep), past ``latest``, the version of the signature it replaces."""
    return max(int(time.time()), latest + 1)


def sign_bundle(path: str, key_path: str, version: int | None = None) -> dict:
    """Sign the bundle at ``path`` in place (written all at once) with the private key in ``key_path``, as
    ``version`` (by default :func:`next_version`)."""
    from edgefp.bundle import Bundle

    key = load_private_key(key_path)
    bundle = Bundle.load(path)
    try:
        latest = Signature.unpack(bundle.signature).version if bundle.signature is not None else 0
    except SignatureError:
        latest = 0
    found = bundle.sign(key, next_version(latest) if version is None else version)
    bundle.write(path, force=True)
    return {"bundle": path, "name": bundle.manifest.name, "version": found.version, "key_id": found.key_id.hex()}


def check(signature: bytes | None, manifest_bytes: bytes, trusted: bytes) -> Signature:
    """The signature of a bundle checked against the trusted raw public key; SignatureError when it is
    missing, damaged or made with another key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if signature is None:
        raise SignatureError("the bundle is not signed; this device takes only bundles signed with its owner's key")
    found = Signature.unpack(signature)
    if found.key_id != key_id(trusted):
        trusts = key_id(trusted).hex()
        raise SignatureError(f"the bundle is signed with key {found.key_id.hex()}, this device trusts {trusts}")
    try:
        Ed25519PublicKey.from_public_bytes(trusted).verify(
            found.value, signed_message(found.version, found.key_id, manifest_bytes)
        )
    except InvalidSignature:
        raise SignatureError("the bundle's signature does not verify: it was changed after signing") from None
    return found


def check_version(found: Signature, manifest_bytes: bytes, last: tuple[int, bytes] | None) -> None:
    """Refuse (RollbackError) a version below the last one activated, or that version with another manifest."""
    if last is None:
        return
    version, manifest_sha = last
    same = hashlib.sha256(manifest_bytes).digest() == manifest_sha
    if found.version < version or (found.version == version and not same):
        raise RollbackError(
            f"the bundle is version {found.version}; this device runs version {version} and takes only newer ones"
        )
