"""The shared key of an agent that listens beyond its own machine, read from a key file."""

from __future__ import annotations

from edgefp.errors import EdgefpError
from edgefp.limits import MIN_KEY_BYTES


def read_key(path: str | None) -> bytes | None:
    """The shared key in the file ``path`` (surrounding white space ignored, at least 16 bytes), or None."""
    if path is None:
        return None
    with open(path, "rb") as handle:
        key = handle.read(1 << 16).strip()
    if len(key) < MIN_KEY_BYTES:
        raise EdgefpError(
            f"{path}: the key has {len(key)} bytes, give at least {MIN_KEY_BYTES} "
            "(make one with: python3 -c 'import secrets; print(secrets.token_hex(32))' > KEYFILE)"
        )
    return key
