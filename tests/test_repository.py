"""The model repository: add (verified, created when missing), list/filter, remove, reindex, bad input."""

import dataclasses
import json
import os

import pytest
from click.testing import CliRunner

from edgefp.bundle import Bundle
from edgefp.cli import cli
from edgefp.errors import EdgefpError
from edgefp.repository import Repository, default_root, parse_pairs


def renamed(bundle_dir, name, out):
    """A valid copy of a bundle under another manifest name (a distinct archive, as a second model)."""
    bundle = Bundle.load(bundle_dir)
    bundle.manifest = dataclasses.replace(bundle.manifest, name=name)
    return bundle.write(str(out))


@pytest.fixture
def two_bundles(digits_bundle, tmp_path):
    _, bundle_dir = digits_bundle
    return bundle_dir, renamed(bundle_dir, "other", tmp_path / "other.efp")


def test_add_creates_the_repository_and_lists(two_bundles, tmp_path):
    first, second = two_bundles
    repo = Repository(str(tmp_path / "repo"))
    assert not repo.exists()
    entry = repo.add(first, {"task": "digits", "site": "lab"})
    repo.add(second, {"task": "digits"})
    assert entry.name == "digits04" and entry.input_shape == (8, 8, 1) and entry.labels == list("01234")
    assert os.path.isfile(repo.archive_path(entry)) and entry.path.endswith(entry.sha256 + ".efp")
    assert [e.name for e in repo.entries()] == ["digits04", "other"]
    assert [e.name for e in repo.entries({"site": "lab"})] == ["digits04"]
    assert [e.name for e in repo.entries({"name": "other"})] == ["other"]
    assert repo.entries({"task": "sensors"}) == []


def test_add_refuses_duplicates_and_corrupt_bundles(two_bundles, tmp_path):
    first, _ = two_bundles
    repo = Repository(str(tmp_path / "repo"))
    repo.add(first)
    with pytest.raises(EdgefpError, match="already in the repository"):
        repo.add(first)
    with pytest.raises(EdgefpError, match="already in the repository as 'digits04'"):
        repo.add(first, name="copy")
    repo.add(first, {"v": "2"}, force=True)
    assert repo.entries()[0].tags == {"v": "2"}
    bad = Bundle.read(first)
    bad.files["model.tflite"] = bad.files["model.tflite"][:-1] + b"\x00"
    bad_path = str(tmp_path / "bad.efp")
    with open(bad_path, "wb") as handle:
        handle.write(bad.archive_bytes())
    with pytest.raises(EdgefpError, match="corrupt or was modified"):
        repo.add(bad_path)
    with pytest.raises(EdgefpError, match="KEY=VALUE"):
        parse_pairs(["novalue"], "tag")


def test_remove_and_reindex(two_bundles, tmp_path):
    first, second = two_bundles
    repo = Repository(str(tmp_path / "repo"))
    kept = repo.add(first, {"task": "digits"})
    gone = repo.add(second)
    repo.remove("other")
    assert not os.path.exists(repo.archive_path(gone))
    with pytest.raises(EdgefpError, match="no bundle 'other'.*digits04"):
        repo.remove("other")
    repo.add(second)
    os.remove(repo.index_path)
    with pytest.raises(EdgefpError, match="reindex"):
        repo.entries()
    # a tampered archive is skipped with a warning, the rest comes back with its tags
    with open(repo.archive_path(gone), "r+b") as handle:
        handle.seek(-2000, os.SEEK_END)
        handle.write(b"tampered")
    entries, notes = repo.reindex()
    assert [e.name for e in entries] == ["digits04"] and entries[0].tags == {"task": "digits"}
    assert len(notes) == 1 and gone.sha256 in notes[0] and "modified" in notes[0]
    assert [(e.name, e.sha256) for e in repo.entries()] == [("digits04", kept.sha256)]


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEFP_REPO", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_root() == os.path.join(str(tmp_path), "edgefp", "repo")
    monkeypatch.setenv("EDGEFP_REPO", "/somewhere")
    assert default_root() == "/somewhere"


def test_cli_repo_commands(two_bundles, tmp_path, monkeypatch):
    first, second = two_bundles
    monkeypatch.setenv("EDGEFP_REPO", str(tmp_path / "repo"))
    runner = CliRunner()
    result = runner.invoke(cli, ["repo", "add", first, "--tag", "task=digits"])
    assert result.exit_code == 0, result.output
    assert "added digits04 (8x8x1, 5 labels)" in result.output
    assert runner.invoke(cli, ["repo", "add", second, "--repo", str(tmp_path / "repo")]).exit_code == 0
    listed = json.loads(runner.invoke(cli, ["repo", "list", "--where", "task=digits", "--json"]).output)
    assert [b["name"] for b in listed["bundles"]] == ["digits04"] and listed["bundles"][0]["tags"] == {"task": "digits"}
    assert "other" in runner.invoke(cli, ["repo", "list"]).output
    assert "removed other" in runner.invoke(cli, ["repo", "remove", "other"]).output
    reindexed = json.loads(runner.invoke(cli, ["repo", "reindex", "--json"]).output)
    assert reindexed["bundles"] == ["digits04"] and reindexed["warnings"] == []


def test_lineage_is_recorded_kept_by_reindex_and_checked(two_bundles, tmp_path):
    import sqlite3

    import numpy as np

    first, second = two_bundles
    added = str(tmp_path / "reviewed.npz")
    np.savez(added, x=np.zeros((6, 8, 8, 1), np.float32), y=np.array([5, 5, 5, 5, 1, 1]), labels=list("012345"))
    repo = Repository(str(tmp_path / "repo"))
    repo.add(first)
    with pytest.raises(EdgefpError, match="no bundle 'nothing' in the repository to be the parent"):
        repo.add(second, parent="nothing")
    child = repo.add(second, parent="digits04", data_added=[added, "digits:train:0"])
    assert child.parent == "digits04" and child.lineage["parent_sha256"] == repo.entries()[0].sha256
    assert child.lineage["data_added"][0]["classes"] == {"1": 2, "5": 4}
    assert child.lineage["data_added"][1]["sha256"] is None  # a built-in set: no file of its own
    assert [e.lineage for e in repo.entries()] == [None, child.lineage]
    os.remove(repo.index_path)
    repo.reindex()
    assert [e.parent for e in repo.entries()] == [None, "digits04"]
    with sqlite3.connect(repo.index_path) as connection:  # an index written before lineage was kept
        connection.execute("DROP TABLE lineage")
    assert [e.parent for e in repo.entries()] == [None, None]
    listed = CliRunner().invoke(cli, ["repo", "list", "--repo", repo.root])
    assert listed.exit_code == 0 and "parent" in listed.output


def test_adds_at_the_same_time_keep_the_index_and_the_files_in_agreement(digits_bundle, tmp_path):
    import threading

    _, bundle_dir = digits_bundle
    variants = [renamed(bundle_dir, f"v{i}", tmp_path / f"v{i}.efp") for i in range(6)]
    root = str(tmp_path / "repo")
    outcomes = []

    def add(path, name):
        try:
            Repository(root).add(path, name=name)
            outcomes.append(("added", name))
        except EdgefpError as exc:
            outcomes.append((str(exc), name))

    jobs = [(path, "model") for path in variants] + [(variants[0], "first"), (variants[0], "second")]
    threads = [threading.Thread(target=add, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    added = [name for outcome, name in outcomes if outcome == "added"]
    assert sorted(added) in (["first", "model"], ["model", "second"], ["model"]), outcomes
    assert all("already in the repository" in outcome for outcome, _ in outcomes if outcome != "added")
    repo = Repository(root)
    entries = repo.entries()
    assert sorted(entry.name for entry in entries) == sorted(added)
    on_disk = sorted(name for name in os.listdir(repo.bundles_dir) if name.endswith(".efp"))
    assert on_disk == sorted(f"{entry.sha256}.efp" for entry in entries)
    for entry in entries:
        with open(os.path.join(repo.bundles_dir, f"{entry.sha256}.json")) as handle:
            assert json.load(handle)["name"] == entry.name
        repo.load(entry)
