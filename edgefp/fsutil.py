"""Writing output directories all at once: build in a temporary sibling, then rename into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from edgefp.errors import EdgefpError


@contextlib.contextmanager
def atomic_directory(path: str, *, force: bool = False):
    """Yield a temporary directory that becomes ``path`` only if the block succeeds.

    An existing ``path`` is refused unless ``force``; then it is replaced only after the new one is
    complete, so an interrupted write leaves either the old directory or nothing, never half of one.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not force:
        raise EdgefpError(f"{path} already exists; choose another --out or pass --force to replace it")
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=parent)
    except OSError as exc:
        raise EdgefpError(f"cannot write to {parent}: {exc.strerror}") from exc
    try:
        yield tmp
        if os.path.exists(path):
            old = tmp + ".old"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file_atomic(path: str, content: bytes) -> None:
    """Write ``content`` to a temporary sibling, flush it to disk, then rename it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=directory)
    try:
        with os.fdopen(handle, "wb") as raw:
            raw.write(content)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
