"""Nothing lost, through the commands: an output is written all at once, never over an existing path without
--force, and --force replaces only what edgefp itself wrote (of the same kind, holding nothing else); the
rules themselves are tested on their own in test_fsutil.py."""

import os

import numpy as np

from edgefp.fsutil import MARKER
from tests.cli.test_cli import edgefp


def test_force_never_deletes_a_users_directory(tmp_path):
    here = tmp_path / "v"
    here.mkdir()
    (here / "thesis.txt").write_text("keep")
    attempts = [
        ["export-firmware", "--board", "qemu-m4", "--out", ".", "--force"],
        ["export-firmware", "--board", "qemu-m4", "--out", str(tmp_path), "--force"],
        ["train", "--data", "digits:train:0-4", "--out", "", "--force"],
        ["convert", str(tmp_path / "no-run"), "--calib", "digits:train:0-4", "--out", ".", "--force"],
    ]
    for args in attempts:
        result = edgefp(*args, cwd=here)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "current directory or one above it" in result.stderr or "empty" in result.stderr
    assert (here / "thesis.txt").read_text() == "keep"
    result = edgefp("export-firmware", "--board", "qemu-m4", "--out", str(here), "--force")
    assert result.returncode == 2 and "not a firmware project written by edgefp" in result.stderr
    assert os.listdir(here) == ["thesis.txt"]
    fw = tmp_path / "fw"
    assert edgefp("export-firmware", "--board", "qemu-m4", "--out", str(fw)).returncode == 0
    assert edgefp("export-firmware", "--board", "qemu-m4", "--out", str(fw)).returncode == 2
    assert edgefp("export-firmware", "--board", "qemu-m4", "--out", str(fw), "--force").returncode == 0


def test_file_outputs_are_replaced_only_with_force_and_only_when_edgefp_wrote_them(digits_bundle, tmp_path):
    bundle = digits_bundle[1]
    samples = tmp_path / "d.npz"
    np.savez(samples, x=np.random.default_rng(0).random((20, 8, 8, 1), np.float32))
    before = samples.read_bytes()
    for force in ([], ["--force"]):  # the input itself: never
        result = edgefp("score", bundle, "--data", str(samples), "--out", str(samples), *force)
        assert result.returncode == 2 and ("already exists" if not force else "not a score file") in result.stderr
    assert samples.read_bytes() == before
    scores = tmp_path / "scores.npz"
    assert edgefp("score", bundle, "--data", str(samples), "--out", str(scores)).returncode == 0
    assert "already exists" in edgefp("score", bundle, "--data", str(samples), "--out", str(scores)).stderr
    assert edgefp("score", bundle, "--data", str(samples), "--out", str(scores), "--force").returncode == 0

    timing = tmp_path / "timing.json"
    timing.write_text('{"mine": true}')
    for force, message in (([], "already exists"), (["--force"], "not a bench result")):
        result = edgefp("bench", bundle, "-n", "3", "--out", str(timing), *force)
        assert result.returncode == 2 and message in result.stderr
    assert timing.read_text() == '{"mine": true}'
    os.remove(timing)
    assert edgefp("bench", bundle, "-n", "3", "--out", str(timing)).returncode == 0
    assert edgefp("bench", bundle, "-n", "3", "--out", str(timing), "--force").returncode == 0

    sources = tmp_path / "src"
    sources.mkdir()
    (sources / "main.c").write_text("int main(void) { return 0; }")
    result = edgefp("export-c", bundle, "--out", str(sources), "--force")
    assert result.returncode == 2 and "not a C sources directory written by edgefp" in result.stderr
    assert os.listdir(sources) == ["main.c"]
    assert edgefp("export-c", bundle, "--out", str(tmp_path / "c")).returncode == 0
    assert edgefp("export-c", bundle, "--out", str(tmp_path / "c"), "--force").returncode == 0


def test_a_failed_report_leaves_nothing_and_a_report_replaces_only_a_report(digits_bundle, tmp_path):
    bundle = digits_bundle[1]
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((5, 7, 7), np.float32))
    result = edgefp("report", bundle, "--data", str(wrong), "--out", str(tmp_path / "report"))
    assert result.returncode == 2 and "samples have shape (7, 7)" in result.stderr
    assert not (tmp_path / "report").exists() and os.listdir(tmp_path) == ["wrong.npz"]
    home = tmp_path / "home"
    home.mkdir()
    result = edgefp("report", bundle, "--data", "digits:test:0-4", "--out", str(home), "--force")
    assert result.returncode == 2 and "not a report written by edgefp" in result.stderr
    report = tmp_path / "report"
    assert edgefp("report", bundle, "--data", "digits:test:0-4", "--out", str(report)).returncode == 0
    assert edgefp("report", bundle, "--data", "digits:test:0-4", "--out", str(report), "--force").returncode == 0
    assert sorted(os.listdir(report)) == [MARKER, "confusion.png", "fingerprint.png", "index.html"]
