"""The model repository: a directory of verified bundles and a small SQLite index of their metadata.

Layout (docs/selection.md)::

    REPO/
      index.sqlite            name, sha256, path, created, added, input shape, labels, layers; tags; lineage
      bundles/<sha256>.efp    each bundle as a single archive, named by the SHA-256 of its bytes
      bundles/<sha256>.json   what is not in the bundle itself: the repository name, the tags, the lineage

The archives and their ``.json`` sidecars are the truth; the index only makes listing and filtering
fast and can always be rebuilt from them (:meth:`Repository.reindex`). Every file is written to a
temporary sibling and renamed into place, and the index is changed in one transaction (rebuilt into
a new file that replaces the old one), so an interrupted command leaves the old state or the new one.
Commands that change the repository hold an exclusive lock on ``REPO/.lock`` from their first look at
the index to their last write, so that two at once run one after the other.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import sqlite3
from dataclasses import dataclass, field

import numpy as np

from edgefp.bundle import ARCHIVE_SUFFIX, Bundle, sha256
from edgefp.errors import EdgefpError, option
from edgefp.fsutil import atomic_file, sha256_file, write_file_atomic

INDEX = "index.sqlite"
LOCK = ".lock"
BUNDLES = "bundles"
NAME_RE = re.compile(r"^[a-z0-9_]+$")
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
BUILTIN_KEYS = ("name",)

_SCHEMA = """
CREATE TABLE bundles (
    name TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, path TEXT NOT NULL, created TEXT, added TEXT,
    input_shape TEXT NOT NULL, labels TEXT NOT NULL, layers INTEGER NOT NULL, target_fpr REAL, bytes INTEGER
);
CREATE TABLE tags (
    name TEXT NOT NULL REFERENCES bundles(name) ON DELETE CASCADE, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (name, key)
);
"""
_LINEAGE = """
CREATE TABLE IF NOT EXISTS lineage (
    name TEXT PRIMARY KEY REFERENCES bundles(name) ON DELETE CASCADE, parent TEXT, parent_sha256 TEXT,
    data_added TEXT NOT NULL
);
"""


def default_root() -> str:
    """``EDGEFP_REPO``, else ``$XDG_DATA_HOME/edgefp/repo`` (``~/.local/share/edgefp/repo``)."""
    if os.environ.get("EDGEFP_REPO"):
        return os.environ["EDGEFP_REPO"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "edgefp", "repo")


def parse_pairs(pairs, what: str) -> dict[str, str]:
    """``("task=digits", ...)`` -> ``{"task": "digits"}``; a clear error, naming the parameter ``what``,
    for anything else."""
    parsed = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not TAG_KEY_RE.match(key):
            raise EdgefpError(f"{option(what)} must be KEY=VALUE (KEY of letters, digits, '_', '.', '-'), got '{pair}'")
        parsed[key] = value
    return parsed


@dataclass
class Entry:
    """One bundle of the repository as the index knows it."""

    name: str
    sha256: str
    path: str
    created: str | None
    added: str | None
    input_shape: tuple[int, ...]
    labels: list[str]
    layers: int
    target_fpr: float | None
    bytes: int
    tags: dict[str, str] = field(default_factory=dict)
    lineage: dict | None = None  # parent (name, sha256) and data_added (file, sha256, samples, classes)

    @property
    def parent(self) -> str | None:
        return (self.lineage or {}).get("parent")

    def as_dict(self) -> dict:
        report = dict(self.__dict__)
        report["input_shape"] = list(self.input_shape)
        return report

    def matches(self, where: dict[str, str]) -> bool:
        return all((self.name if key == "name" else self.tags.get(key)) == value for key, value in where.items())


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _entry_from_bundle(bundle: Bundle, name: str, digest: str, path: str, size: int, added, tags) -> Entry:
    manifest = bundle.manifest
    return Entry(
        name=name,
        sha256=digest,
        path=path,
        created=manifest.created,
        added=added,
        input_shape=manifest.input.shape,
        labels=[label.name for label in manifest.labels],
        layers=len(manifest.layers),
        target_fpr=manifest.score.target_fpr if manifest.score else None,
        bytes=size,
        tags=dict(tags),
    )


class Repository:
    """A repository at ``root`` (created by :meth:`add` when missing)."""

    def __init__(self, root: str | None = None):
        self.root = os.path.abspath(root or default_root())
        self.bundles_dir = os.path.join(self.root, BUNDLES)
        self.index_path = os.path.join(self.root, INDEX)

    # ------------------------------------------------------------------------------ the index
    def exists(self) -> bool:
        return os.path.isfile(self.index_path)

    def _require(self) -> None:
        if not self.exists():
            if os.path.isdir(self.bundles_dir):
                raise EdgefpError(f"{self.root}: the repository has no index; rebuild it with 'edgefp repo reindex'")
            raise EdgefpError(f"{self.root}: no repository here; create one with 'edgefp repo add BUNDLE --repo DIR'")

    def _connect(self, path: str | None = None) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(path or self.index_path, isolation_level=None, timeout=30)
            connection.execute("PRAGMA foreign_keys = ON")
            connection.executescript(_LINEAGE)  # indexes written before lineage was kept gain the table
        except sqlite3.Error as exc:
            raise EdgefpError(f"{path or self.index_path}: cannot open the index ({exc})") from None
        return connection

    def _create(self) -> None:
        try:
            os.makedirs(self.bundles_dir, exist_ok=True)
        except OSError as exc:
            raise EdgefpError(f"cannot create the repository at {self.root}: {exc.strerror}") from None
        if not self.exists():
            self._build_index([])

    @contextlib.contextmanager
    def _locked(self):
        """Hold the repository's lock: changes by other processes wait until the block ends."""
        try:
            handle = open(os.path.join(self.root, LOCK), "a")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise EdgefpError(f"cannot lock the repository at {self.root}: {exc.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            handle.close()

    def _build_index(self, entries: list[Entry]) -> None:
        """Write a complete index into a temporary file and rename it over the old one."""
        with atomic_file(self.index_path) as tmp:
            connection = self._connect(tmp)
            try:
                connection.executescript(_SCHEMA)
                connection.execute("BEGIN")
                for entry in entries:
                    self._insert(connection, entry)
                connection.execute("COMMIT")
            finally:
                connection.close()

    @staticmethod
    def _insert(connection: sqlite3.Connection, entry: Entry) -> None:
        connection.execute(
            "INSERT INTO bundles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.name,
                entry.sha256,
                entry.path,
                entry.created,
                entry.added,
                json.dumps(list(entry.input_shape)),
                json.dumps(entry.labels),
                entry.layers,
                entry.target_fpr,
                entry.bytes,
            ),
        )
        connection.executemany(
            "INSERT INTO tags VALUES (?, ?, ?)", [(entry.name, key, value) for key, value in entry.tags.items()]
        )
        if entry.lineage:
            lineage = entry.lineage
            connection.execute(
                "INSERT INTO lineage VALUES (?, ?, ?, ?)",
                (entry.name, lineage.get("parent"), lineage.get("parent_sha256"), json.dumps(lineage["data_added"])),
            )

    def entries(self, where: dict[str, str] | None = None) -> list[Entry]:
        """Every indexed bundle (those matching ``where`` on tags or ``name``), by name."""
        self._require()
        connection = self._connect()
        try:
            rows = connection.execute("SELECT * FROM bundles ORDER BY name").fetchall()
            tags: dict[str, dict[str, str]] = {}
            for name, key, value in connection.execute("SELECT name, key, value FROM tags ORDER BY key"):
                tags.setdefault(name, {})[key] = value
            lineage = {
                name: {"parent": parent, "parent_sha256": digest, "data_added": json.loads(added)}
                for name, parent, digest, added in connection.execute("SELECT * FROM lineage")
            }
        except sqlite3.Error as exc:
            raise EdgefpError(f"{self.index_path}: unreadable index ({exc}); run 'edgefp repo reindex'") from None
        finally:
            connection.close()
        found = []
        for name, digest, path, created, added, shape, labels, layers, fpr, size in rows:
            entry = Entry(
                name, digest, path, created, added, tuple(json.loads(shape)), json.loads(labels), layers, fpr, size
            )
            entry.tags, entry.lineage = tags.get(name, {}), lineage.get(name)
            if entry.matches(where or {}):
                found.append(entry)
        return found

    def archive_path(self, entry: Entry) -> str:
        return os.path.join(self.root, entry.path)

    # ------------------------------------------------------------------------------ commands
    def add(
        self,
        source: str,
        tags: dict[str, str] | None = None,
        *,
        name: str | None = None,
        force=False,
        parent: str | None = None,
        data_added: list[str] = (),
    ) -> Entry:
        """Verify the bundle at ``source`` (directory or archive) and store it; create the repository if needed.
        ``parent`` (a bundle of the repository) and ``data_added`` (data files) record where it comes from:
        the model it was retrained from and the data that was added for it."""
        bundle = Bundle.load(source)
        if not bundle.fingerprinted:
            raise EdgefpError(f"{source}: a bundle without a fingerprint cannot be selected; add one of edgefp convert")
        name = name or bundle.manifest.name
        if not name or not NAME_RE.fullmatch(name):
            raise EdgefpError(f"'{name}' is not a valid bundle name (use a-z, 0-9 and '_'); give {option('name')}")
        for key in tags or {}:
            if key in BUILTIN_KEYS:
                raise EdgefpError(f"'{key}' is not a tag; it is the bundle's own metadata")
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise EdgefpError(f"cannot create the repository at {self.root}: {exc.strerror}") from None
        with self._locked():
            return self._add(source, bundle, name, tags or {}, force, parent, data_added)

    def _add(self, source: str, bundle: Bundle, name: str, tags: dict[str, str], force: bool, parent, data_added):
        self._create()
        archive = bundle.archive_bytes()
        digest = sha256(archive)
        existing = {entry.name: entry for entry in self.entries()}
        same = [entry.name for entry in existing.values() if entry.sha256 == digest and entry.name != name]
        if same:
            raise EdgefpError(f"{source}: this bundle is already in the repository as '{same[0]}'")
        if name in existing and not force:
            raise EdgefpError(
                f"'{name}' is already in the repository; pass {option('force')} to replace it, or give {option('name')}"
            )
        lineage = self._lineage(existing, name, parent, data_added) if parent or data_added else None
        path = os.path.join(BUNDLES, digest + ARCHIVE_SUFFIX)
        entry = _entry_from_bundle(bundle, name, digest, path, len(archive), _now(), tags)
        entry.lineage = lineage
        write_file_atomic(os.path.join(self.root, path), archive)
        meta = {"name": name, "tags": entry.tags, "added": entry.added, "lineage": lineage}
        write_file_atomic(self._sidecar(digest), json.dumps(meta).encode())
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            old = connection.execute("SELECT sha256 FROM bundles WHERE name = ?", (name,)).fetchone()
            connection.execute("DELETE FROM bundles WHERE name = ?", (name,))
            self._insert(connection, entry)
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            raise EdgefpError(f"{self.index_path}: cannot update the index ({exc})") from None
        finally:
            connection.close()
        if old and old[0] != digest:
            self._delete_files(old[0])
        return entry

    @staticmethod
    def _lineage(existing: dict[str, Entry], name: str, parent: str | None, data_added) -> dict:
        """The lineage of a bundle added as ``name``: its parent in the repository and the data added."""
        from edgefp import data

        if parent is not None and parent not in existing:
            names = ", ".join(existing) or "none"
            raise EdgefpError(f"no bundle '{parent}' in the repository to be the parent (it holds: {names})")
        if parent == name:
            raise EdgefpError(f"'{name}' cannot be its own parent; add the retrained bundle under a new name")
        added = []
        for spec in data_added:
            dataset, source = data.load(spec), data.parse_spec(spec)[0]
            digest = sha256_file(source) if os.path.isfile(source) else None  # a built-in set has no file
            classes = {}
            for value in np.unique(dataset.y) if dataset.y is not None else []:
                label = dataset.label_names.get(int(value), str(int(value)))
                classes[label] = int(np.sum(dataset.y == value))
            added.append({"data": spec, "sha256": digest, "samples": len(dataset), "classes": classes})
        return {
            "parent": parent,
            "parent_sha256": existing[parent].sha256 if parent else None,
            "data_added": added,
        }

    def remove(self, name: str) -> Entry:
        """Take a bundle out of the index, then delete its files."""
        self._require()
        with self._locked():
            return self._remove(name)

    def _remove(self, name: str) -> Entry:
        entry = self.entry(name)
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("DELETE FROM bundles WHERE name = ?", (name,))
            connection.execute("COMMIT")
        finally:
            connection.close()
        self._delete_files(entry.sha256)
        return entry

    def reindex(self) -> tuple[list[Entry], list[str]]:
        """Rebuild the index from the stored archives; return (entries, warnings about skipped files)."""
        if not os.path.isdir(self.bundles_dir):
            raise EdgefpError(f"{self.root}: no repository here (no '{BUNDLES}' directory)")
        with self._locked():
            return self._reindex()

    def _reindex(self) -> tuple[list[Entry], list[str]]:
        entries, skipped, names = [], [], set()
        for file_name in sorted(os.listdir(self.bundles_dir)):
            if not file_name.endswith(ARCHIVE_SUFFIX) or file_name.startswith("."):
                continue
            path = os.path.join(self.bundles_dir, file_name)
            digest = file_name[: -len(ARCHIVE_SUFFIX)]
            try:
                if sha256_file(path) != digest:
                    raise EdgefpError(f"{path}: its SHA-256 does not match its name; the file was modified")
                bundle = Bundle.load(path)
                meta = self._read_sidecar(digest)
                if meta is None:
                    skipped.append(f"{file_name}: no readable tags file; indexed under the bundle's own name, no tags")
                    meta = {}
                name = meta.get("name") or bundle.manifest.name
                if name in names:
                    raise EdgefpError(f"{path}: a second bundle named '{name}'")
                entry = _entry_from_bundle(
                    bundle, name, digest, os.path.join(BUNDLES, file_name), os.path.getsize(path), meta.get("added"),
                    meta.get("tags", {}),
                )  # fmt: skip
                entry.lineage = meta.get("lineage")
            except (EdgefpError, OSError, KeyError, TypeError, ValueError) as exc:
                skipped.append(f"skipped {file_name}: {exc}")
                continue
            names.add(name)
            entries.append(entry)
        self._build_index(entries)
        return entries, skipped

    # ------------------------------------------------------------------------------ files
    def _sidecar(self, digest: str) -> str:
        return os.path.join(self.bundles_dir, digest + ".json")

    def _read_sidecar(self, digest: str) -> dict | None:
        try:
            with open(self._sidecar(digest)) as handle:
                meta = json.load(handle)
            return meta if isinstance(meta, dict) else None
        except (OSError, ValueError):
            return None

    def _delete_files(self, digest: str) -> None:
        for path in (os.path.join(self.bundles_dir, digest + ARCHIVE_SUFFIX), self._sidecar(digest)):
            if os.path.exists(path):
                os.remove(path)

    def entry(self, name: str) -> Entry:
        """The entry of the bundle called ``name``."""
        entries = self.entries()
        found = [entry for entry in entries if entry.name == name]
        if not found:
            names = ", ".join(entry.name for entry in entries) or "none"
            raise EdgefpError(f"no bundle '{name}' in {self.root} (it holds: {names})")
        return found[0]

    def load(self, entry: Entry) -> Bundle:
        """Read and verify a stored bundle: its bytes must match the indexed SHA-256, its files the manifest."""
        path = self.archive_path(entry)
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise EdgefpError(f"{path}: {exc.strerror}; run 'edgefp repo reindex'") from None
        if digest != entry.sha256:
            raise EdgefpError(f"{path}: does not match its SHA-256 in the index; the file was modified")
        return Bundle.load(path)
