"""fsutil on its own: outputs are written all at once (a temporary sibling renamed into place), an existing
path is replaced only with ``force`` and only when edgefp wrote it (the ``.edgefp`` marker: same kind,
nothing else inside), and a writer killed at any step leaves the old output or the new one, never half."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from edgefp.errors import EdgefpError
from edgefp.fsutil import (
    MARKER,
    atomic_directory,
    check_directory_output,
    check_file_output,
    output_path,
    read_marker,
    sha256_file,
    write_file_atomic,
)

OLD = {f"old-{i}.txt": f"old {i}\n" * 200 for i in range(3)}
NEW = {f"new-{i}.txt": f"new {i}\n" * 200 for i in range(5)}
BIG = {f"big-{i}.txt": f"big {i}\n" * 50_000 for i in range(5)}  # 2 MB: long enough to be killed mid-write

# A writer in a process of its own, writing the files of a JSON source (a directory of them, or one file of
# their texts joined). It says "ready" once set up; with N > 0 it kills itself (SIGKILL: no clean-up runs) at
# its Nth file-system step (an audit event: open, rename, remove, mkdir, rmdir, chmod). At the end it prints
# how many steps there were.
WRITER = """
import json, os, signal, sys
from edgefp import fsutil

what, path, kill_at, source = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
with open(source) as handle:
    new = json.load(handle)
steps = 0

def hook(event, args):
    global steps
    if event in ("open", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.chmod"):
        steps += 1
        if steps == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

print("ready", flush=True)
sys.addaudithook(hook)
if what == "directory":
    with fsutil.atomic_directory(path, "run", force=True) as tmp:
        for name, text in new.items():
            with open(os.path.join(tmp, name), "w") as handle:
                handle.write(text)
else:
    fsutil.write_file_atomic(path, "".join(new.values()).encode())
print(steps)
"""


def write_directory(path, files: dict[str, str], kind: str = "run", force: bool = False):
    with atomic_directory(str(path), kind, force=force) as tmp:
        for name, text in files.items():
            with open(os.path.join(tmp, name), "w") as handle:
                handle.write(text)
    return path


def contents(path) -> dict[str, str]:
    return {name: (path / name).read_text() for name in os.listdir(path)}


def written(files: dict[str, str], kind: str = "run") -> dict[str, str]:
    """What a directory of ``files`` holds once atomic_directory wrote it: the files and the marker."""
    return {**files, MARKER: json.dumps({"kind": kind, "files": sorted(files)})}


def killed_writers(tmp_path, what: str, prepare, files: dict[str, str]):
    """Run the writer of ``files`` over what ``prepare(folder)`` set up in a fresh folder, killed at each of
    its steps in turn, then at moments spread over the time it takes (mid-write); yield each folder."""
    source = tmp_path / "source.json"
    source.write_text(json.dumps(files))

    def start(folder, kill_at=0):
        args = [sys.executable, "-c", WRITER, what, str(prepare(folder)), str(kill_at), str(source)]
        child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n"
        return child

    child = start(tmp_path / "dry")
    began = time.monotonic()
    steps, took = int(child.stdout.read()), time.monotonic() - began
    assert child.wait() == 0 and steps >= 3
    for kill_at in range(1, steps + 1):
        child = start(tmp_path / f"step{kill_at}", kill_at)
        assert child.wait(timeout=60) == -signal.SIGKILL
        child.stdout.close()
        yield tmp_path / f"step{kill_at}"
    for moment in range(6):
        child = start(tmp_path / f"moment{moment}")
        time.sleep(took * moment / 6)
        child.kill()
        child.wait(timeout=60)
        child.stdout.close()
        yield tmp_path / f"moment{moment}"


@pytest.mark.parametrize("out", ["", " ", ".", "..", "{cwd}", "{parent}", "/"])
def test_the_current_directory_and_those_above_it_are_never_outputs(tmp_path, monkeypatch, out):
    here = tmp_path / "work" / "here"
    here.mkdir(parents=True)
    (here / "thesis.txt").write_text("keep")
    monkeypatch.chdir(here)
    out = out.format(cwd=here, parent=here.parent)
    with pytest.raises(EdgefpError, match="empty|current directory or one above it"):
        check_directory_output(out, "run", force=True)
    with pytest.raises(EdgefpError, match="empty|current directory or one above it"):
        check_file_output(out, force=True, written_by_edgefp=lambda path: True, kind="score file")
    assert (here / "thesis.txt").read_text() == "keep"


def test_an_output_is_an_absolute_path_and_never_a_link(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert output_path("a/b") == str(tmp_path / "a" / "b")
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "target", tmp_path / "link")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    for link in ("link", "dangling"):
        with pytest.raises(EdgefpError, match=f"{link} is a symbolic link"):
            output_path(link)
    assert os.listdir(tmp_path / "target") == []


def test_force_replaces_only_an_edgefp_directory_of_the_same_kind_holding_nothing_else(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep")
    with pytest.raises(EdgefpError, match="not a run written by edgefp"):
        check_directory_output(str(foreign), "run", force=True)
    run = write_directory(tmp_path / "run", OLD)
    with pytest.raises(EdgefpError, match="already exists"):
        check_directory_output(str(run), "run", force=False)
    with pytest.raises(EdgefpError, match="not a bundle written by edgefp"):
        check_directory_output(str(run), "bundle", force=True)
    assert check_directory_output(str(run), "run", force=True) == str(run)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(EdgefpError, match=r"holds files edgefp did not write \(notes.txt\)"):
        check_directory_output(str(run), "run", force=True)
    os.remove(run / "notes.txt")
    write_directory(run, NEW, force=True)
    assert contents(run) == written(NEW)
    assert sorted(os.listdir(tmp_path)) == ["foreign", "run"]
    assert contents(foreign) == {"thesis.txt": "keep"}


@pytest.mark.parametrize(
    "marker",
    ["", "not json", "[]", '"run"', '{"kind": "run"}', '{"kind": "run", "files": "a.txt"}', '{"files": null}'],
)
def test_a_damaged_marker_is_no_marker_and_force_then_refuses(tmp_path, marker):
    run = write_directory(tmp_path / "run", OLD)
    (run / MARKER).write_text(marker)
    assert read_marker(str(run)) is None
    with pytest.raises(EdgefpError, match="not a run written by edgefp"):
        check_directory_output(str(run), "run", force=True)
    assert contents(run) == {**OLD, MARKER: marker}


def test_a_marker_is_read_back_as_written(tmp_path):
    run = write_directory(tmp_path / "run", OLD, kind="C sources")
    assert read_marker(str(run)) == {"kind": "C sources", "files": sorted(OLD)}
    assert read_marker(str(tmp_path)) is None
    assert read_marker(str(tmp_path / "missing")) is None


def test_a_file_is_replaced_only_with_force_and_only_when_its_recogniser_says_edgefp_wrote_it(tmp_path):
    def ours(path):
        return open(path).read().startswith("edgefp")

    mine, theirs = tmp_path / "scores.txt", tmp_path / "thesis.txt"
    mine.write_text("edgefp scores")
    theirs.write_text("keep")
    assert check_file_output(str(tmp_path / "new.txt"), force=False, written_by_edgefp=ours, kind="x") == str(
        tmp_path / "new.txt"
    )
    for path in (mine, theirs):
        with pytest.raises(EdgefpError, match="already exists"):
            check_file_output(str(path), force=False, written_by_edgefp=ours, kind="score file")
    assert check_file_output(str(mine), force=True, written_by_edgefp=ours, kind="score file") == str(mine)
    with pytest.raises(EdgefpError, match="thesis.txt is not a score file written by edgefp"):
        check_file_output(str(theirs), force=True, written_by_edgefp=ours, kind="score file")
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(EdgefpError, match="not a score file written by edgefp"):
        check_file_output(str(folder), force=True, written_by_edgefp=lambda path: True, kind="score file")
    assert theirs.read_text() == "keep" and mine.read_text() == "edgefp scores"


def test_a_failed_block_leaves_the_old_directory_and_no_trace(tmp_path):
    run = write_directory(tmp_path / "run", OLD)
    for exception in (ValueError("bad data"), KeyboardInterrupt()):
        with pytest.raises(type(exception)):
            with atomic_directory(str(run), "run", force=True) as tmp:
                (tmp_path / "seen").write_text(tmp)
                with open(os.path.join(tmp, "half.txt"), "w") as handle:
                    handle.write("half")
                raise exception
        assert contents(run) == written(OLD)
        assert sorted(os.listdir(tmp_path)) == ["run", "seen"]
    with pytest.raises(RuntimeError):
        with atomic_directory(str(tmp_path / "new"), "run"):
            raise RuntimeError
    assert sorted(os.listdir(tmp_path)) == ["run", "seen"]


def test_a_directory_that_stopped_being_edgefps_while_writing_is_left_alone(tmp_path):
    run = write_directory(tmp_path / "run", OLD)
    with pytest.raises(EdgefpError, match="holds files edgefp did not write"):
        with atomic_directory(str(run), "run", force=True) as tmp:
            (run / "thesis.txt").write_text("written meanwhile")
            with open(os.path.join(tmp, "new.txt"), "w") as handle:
                handle.write("new")
    assert contents(run) == {**written(OLD), "thesis.txt": "written meanwhile"}
    assert os.listdir(tmp_path) == ["run"]


def test_outputs_get_the_usual_permissions_and_missing_parents(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    run = write_directory(tmp_path / "a" / "b" / "run", OLD)
    assert os.stat(run).st_mode & 0o777 == 0o777 & ~umask
    path = tmp_path / "c" / "d" / "file.bin"
    write_file_atomic(str(path), b"content")
    assert path.read_bytes() == b"content" and os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    write_file_atomic(str(path), b"")
    assert path.read_bytes() == b"" and os.listdir(path.parent) == ["file.bin"]


def test_a_directory_cannot_be_written_where_a_file_stands_in_the_way(tmp_path):
    (tmp_path / "file").write_text("keep")
    with pytest.raises(EdgefpError, match="cannot write to"):
        write_directory(tmp_path / "file" / "run", OLD)
    assert (tmp_path / "file").read_text() == "keep" and os.listdir(tmp_path) == ["file"]


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20])
def test_sha256_file_reads_any_size_in_pieces(tmp_path, size):
    content = hashlib.shake_128(str(size).encode()).digest(size)
    (tmp_path / "f").write_bytes(content)
    assert sha256_file(str(tmp_path / "f")) == hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replaced"])
def test_a_directory_writer_killed_at_any_moment_leaves_the_old_output_or_the_new_one(tmp_path, existing):
    def prepare(folder):
        folder.mkdir()
        if existing:
            write_directory(folder / "run", OLD)
        return folder / "run"

    outcomes = set()
    for folder in killed_writers(tmp_path, "directory", prepare, BIG):
        run = folder / "run"
        left = [name for name in os.listdir(folder) if name != "run"]
        assert all(name.startswith(".run.") and ".partial" in name for name in left), left
        if run.exists():
            assert contents(run) in (written(BIG), written(OLD))
            outcomes.add("new" if contents(run) == written(BIG) else "old")
        else:  # between taking the old one away and renaming the new one in: the old one is kept aside
            kept = [contents(folder / name) for name in left if name.endswith(".old")]
            assert kept == ([written(OLD)] if existing else [])
            outcomes.add("none")
        write_directory(run, NEW, force=True)  # what was left behind never blocks the next writer
        assert contents(run) == written(NEW)
    assert outcomes >= ({"old", "none", "new"} if existing else {"none"})


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replaced"])
def test_a_file_writer_killed_at_any_moment_leaves_the_old_file_or_the_new_one(tmp_path, existing):
    def prepare(folder):
        folder.mkdir()
        if existing:
            (folder / "out.bin").write_bytes(b"old")
        return folder / "out.bin"

    new = "".join(BIG.values()).encode()
    outcomes = set()
    for folder in killed_writers(tmp_path, "file", prepare, BIG):
        path = folder / "out.bin"
        left = [name for name in os.listdir(folder) if name != "out.bin"]
        assert all(name.startswith(".out.bin.") and name.endswith(".partial") for name in left), left
        outcome = path.read_bytes() if path.exists() else None
        assert outcome in (new, b"old" if existing else None)
        outcomes.add(outcome)
    assert outcomes >= ({b"old"} if existing else {None})
