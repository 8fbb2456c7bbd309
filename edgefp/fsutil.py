"""Writing outputs without losing anything: build in a temporary sibling, then rename into place; replace
an existing output only when asked (``force``) and only when edgefp itself wrote it.

Directories edgefp writes (a RUN, a bundle, a firmware project, C sources, a report, pulled samples)
carry a marker file, ``.edgefp``, naming their kind and the entries written; ``force`` replaces such a
directory only when it is of the same kind and holds nothing else. A file output is replaced only when
its recogniser says edgefp wrote it (a score file, a bench result, a bundle archive). The current
directory, any directory above it and the empty path are never outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile

from edgefp.errors import EdgefpError, option

MARKER = ".edgefp"
MAX_JSON_BYTES = 64 << 20  # the largest JSON file edgefp reads (a bench result of 100,000 latencies is 2 MB)
_CHOOSE_OR_FORCE = f"choose another {option('out')} or pass {option('force')} to replace it"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def output_path(path: str) -> str:
    """``path`` made absolute, refused when empty, the current directory, one above it or a link."""
    if not str(path).strip():
        raise EdgefpError(f"the output path is empty; name a new file or directory with {option('out')}")
    full = os.path.abspath(path)
    here = os.path.realpath(os.getcwd())
    real = os.path.realpath(full)
    if here == real or here.startswith(real.rstrip(os.sep) + os.sep):
        raise EdgefpError(f"{path} is the current directory or one above it; name a new directory with {option('out')}")
    if os.path.islink(full):
        raise EdgefpError(f"{path} is a symbolic link; name a new file or directory with {option('out')}")
    return full


def read_marker(path: str) -> dict | None:
    """The marker of a directory edgefp wrote (``{"kind", "files"}``), or None."""
    try:
        with open(os.path.join(path, MARKER)) as handle:
            marker = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), list):
        return None
    return marker


def read_json(path: str, what: str, *, max_bytes: int = MAX_JSON_BYTES, missing: str = "") -> dict:
    """The JSON object in the file ``path``, or one EdgefpError naming it a ``what`` ("bench file") and
    saying what is wrong: missing (followed by the hint ``missing``), larger than ``max_bytes``, not
    JSON, or not an object. Schemas are the caller's to check."""
    try:
        if os.path.getsize(path) > max_bytes:
            raise EdgefpError(f"{path}: more than {max_bytes} bytes; not a {what}")
        with open(path, "rb") as handle:
            content = json.load(handle)
    except FileNotFoundError:
        raise EdgefpError(f"{path}: no such {what}" + (f"; {missing}" if missing else "")) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise EdgefpError(f"{path}: not a readable {what} ({str(exc)[:200] or 'nested too deeply'})") from None
    if not isinstance(content, dict):
        raise EdgefpError(f"{path}: not a {what} (it holds no JSON object)")
    return content


def _not_written_by_edgefp(path: str, kind: str) -> EdgefpError:
    return EdgefpError(
        f"{path} is not a {kind} written by edgefp; {option('force')} replaces only those: remove it yourself or "
        f"choose another {option('out')}"
    )


def check_directory_output(path: str, kind: str, *, force: bool) -> str:
    """The absolute path a ``kind`` directory may be written to, or one clear EdgefpError."""
    full = output_path(path)
    if not os.path.lexists(full):
        return full
    if not force:
        raise EdgefpError(f"{path} already exists; {_CHOOSE_OR_FORCE}")
    marker = read_marker(full) if os.path.isdir(full) else None
    if marker is None or marker.get("kind") != kind:
        raise _not_written_by_edgefp(path, kind)
    foreign = sorted(set(os.listdir(full)) - set(marker["files"]) - {MARKER})
    if foreign:
        raise EdgefpError(
            f"{path} holds files edgefp did not write ({', '.join(foreign[:3])}); "
            f"move them or choose another {option('out')}"
        )
    return full


def check_file_output(path: str, *, force: bool, written_by_edgefp, kind: str) -> str:
    """The absolute path a file may be written to: new, or with ``force`` a regular file that
    ``written_by_edgefp(path)`` recognises as a ``kind`` edgefp wrote."""
    full = output_path(path)
    if not os.path.lexists(full):
        return full
    if not force:
        raise EdgefpError(f"{path} already exists; {_CHOOSE_OR_FORCE}")
    if not os.path.isfile(full) or not written_by_edgefp(full):
        raise _not_written_by_edgefp(path, kind)
    return full


@contextlib.contextmanager
def atomic_directory(path: str, kind: str, *, force: bool = False):
    """Yield a temporary directory that becomes ``path`` only if the block succeeds.

    An existing ``path`` is refused unless ``force`` and it is a ``kind`` directory edgefp wrote
    (:func:`check_directory_output`); it is replaced only after the new one is complete, so an
    interrupted write leaves either the old directory or nothing, never half of one.
    """
    path = check_directory_output(path, kind, force=force)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=parent)
        os.chmod(tmp, 0o777 & ~_UMASK)
    except OSError as exc:
        raise EdgefpError(f"cannot write to {parent}: {exc.strerror}") from exc
    try:
        yield tmp
        written = sorted(os.listdir(tmp))
        with open(os.path.join(tmp, MARKER), "w") as handle:
            json.dump({"kind": kind, "files": written}, handle)
        if os.path.lexists(path):
            check_directory_output(path, kind, force=force)  # still edgefp's, after however long the block took
            old = tmp + ".old"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str) -> str:
    """The SHA-256 of a file, read in pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str, mode: int = 0o666):
    """Yield a temporary sibling of ``path`` to write (readable by its owner only while written); when the
    block succeeds it is flushed to disk, given ``mode`` (less the umask) and renamed over ``path`` (a reader
    sees the old file or the new one, never half of one), when it fails it is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=directory)
    os.close(handle)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, mode & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_file_atomic(path: str, content: bytes, mode: int = 0o666) -> None:
    """Write ``content`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path, mode) as tmp, open(tmp, "wb") as raw:
        raw.write(content)
