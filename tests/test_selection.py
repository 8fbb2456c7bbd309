"""Fingerprint-based selection on a small repository of quickly trained digit models (fixed seeds)."""

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgefp import data, shifts
from edgefp.cli import cli
from edgefp.errors import EdgefpError
from edgefp.repository import Repository
from edgefp.selection import NO_MATCH, ks_critical, ks_distance, ood_tolerance, select

DRAWS = 5
N_TARGET = 50


def _bundle(dataset, name, tmp):
    from edgefp.converter.convert import convert
    from edgefp.trainer import train

    train(dataset, seed=0, progress=False).save(str(tmp / f"run_{name}"))
    out = str(tmp / f"{name}.efp")
    convert(str(tmp / f"run_{name}"), dataset, out, name=name)
    return out


@pytest.fixture(scope="module")
def repo(digits_bundle, inverted_bundle, tmp_path_factory):
    """digits 0-4 and digits 0-4 inverted (the session bundles), digits 5-9."""
    tmp = tmp_path_factory.mktemp("selection")
    repository = Repository(str(tmp / "repo"))
    repository.add(digits_bundle[1], {"task": "digits", "domain": "plain"})
    repository.add(inverted_bundle, {"task": "digits", "domain": "inverted"})
    repository.add(_bundle(data.load("digits:train:5-9"), "digits59", tmp), {"task": "digits", "domain": "plain"})
    return repository


def _targets():
    test04 = data.load("digits:test:0-4").x
    return {
        "digits04": test04,
        "digits04_inverted": shifts.apply(test04, "invert"),
        "digits59": data.load("digits:test:5-9").x,
    }


def _draw(x, seed):
    return x[np.random.default_rng(seed).choice(len(x), N_TARGET, replace=False)]


def test_selects_the_model_of_each_domain(repo):
    for expected, x in _targets().items():
        for seed in range(DRAWS):
            report = select(repo, _draw(x, seed))
            assert report["verdict"] == expected, (expected, seed, report["candidates"])
            best, others = report["candidates"][0], report["candidates"][1:]
            assert best["fits"] and best["match_score"] <= 1 and best["ood_share"] <= best["ood_tolerance"]
            assert all(not other["fits"] and other["match_score"] > 1.5 for other in others)


def test_no_suitable_model_for_data_matching_none(repo):
    rng = np.random.default_rng(0)
    noise = np.clip(rng.normal(0.3, 0.3, (N_TARGET, 8, 8)), 0, 1).astype(np.float32)  # (8, 8): fits (8, 8, 1)
    report = select(repo, noise)
    assert report["selected"] is None and report["verdict"] == NO_MATCH
    assert len(report["candidates"]) == 3 and all(c["ood_share"] > 0.9 for c in report["candidates"])


def test_where_filters_candidates(repo):
    report = select(repo, _draw(_targets()["digits04"], 0), where={"domain": "inverted"})
    assert [c["name"] for c in report["candidates"]] == ["digits04_inverted"] and report["verdict"] == NO_MATCH


def test_corrupt_bundle_is_skipped_and_never_selected(repo, tmp_path):
    copy = Repository(str(tmp_path / "repo"))
    shutil.copytree(repo.root, copy.root)
    plain = next(entry for entry in copy.entries() if entry.name == "digits04")
    with open(copy.archive_path(plain), "r+b") as handle:
        handle.seek(-3000, os.SEEK_END)
        handle.write(b"\xff" * 16)
    report = select(copy, _draw(_targets()["digits04"], 0))
    assert [s["name"] for s in report["skipped"]] == ["digits04"] and "modified" in report["skipped"][0]["reason"]
    assert "digits04" not in [c["name"] for c in report["candidates"]] and report["verdict"] == NO_MATCH
    _, notes = copy.reindex()
    assert len(notes) == 1 and [e.name for e in copy.entries()] == ["digits04_inverted", "digits59"]


def test_bad_input(repo, tmp_path):
    with pytest.raises(EdgefpError, match=r"shape \(100, 3\).*input shapes are: \(8, 8, 1\) \(3 bundles\)"):
        select(repo, np.zeros((10, 100, 3), np.float32))
    empty = Repository(str(tmp_path / "empty"))
    empty._create()
    with pytest.raises(EdgefpError, match="is empty"):
        select(empty, np.zeros((10, 8, 8, 1), np.float32))
    with pytest.raises(EdgefpError, match="no repository here"):
        select(Repository(str(tmp_path / "missing")), np.zeros((10, 8, 8, 1), np.float32))
    with pytest.raises(EdgefpError, match="matches `where` task=sensors"):
        select(repo, np.zeros((10, 8, 8, 1), np.float32), where={"task": "sensors"})


def test_statistics():
    rng = np.random.default_rng(0)
    reference = np.quantile(rng.normal(size=500), np.linspace(0, 1, 101))
    assert ks_distance(rng.normal(size=200), reference) < ks_critical(200, 500, 1)
    assert ks_distance(rng.normal(1.0, 1.0, size=200), reference) > ks_critical(200, 500, 1)
    assert ks_distance(np.full(10, 99.0), reference) == 1.0
    assert ood_tolerance(50, 0.05) == 7 and ood_tolerance(1000, 0.05) < 80


def test_cli_select(repo, tmp_path):
    target = str(tmp_path / "target.npz")
    np.savez(target, x=_draw(_targets()["digits59"], 1))
    runner = CliRunner()
    result = runner.invoke(cli, ["select", "--repo", repo.root, "--data", target, "--top", "2"])
    assert result.exit_code == 0, result.output
    assert "selected: digits59" in result.output and result.output.count(" no\n") == 1
    report = json.loads(runner.invoke(cli, ["select", "--repo", repo.root, "--data", target, "--json"]).output)
    assert report["selected"] == "digits59" and len(report["candidates"]) == 3
    np.savez(target, x=np.zeros((5, 3), np.float32))
    from edgefp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["select", "--repo", repo.root, "--data", target])
    assert exit_info.value.code == 2


def test_select_deploys_the_winner_to_a_simulated_board(repo, tmp_path):
    import subprocess
    import sys

    target = str(tmp_path / "target.npz")
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefp", "sim", "--profile", "nrf52840", "--tcp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("socket://"), process.stderr.read()
        runner = CliRunner()
        np.savez(target, x=np.random.default_rng(0).uniform(size=(N_TARGET, 8, 8, 1)))
        result = runner.invoke(cli, ["select", "--repo", repo.root, "--data", target, "--deploy", url, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["deployed"] is None
        np.savez(target, x=_draw(_targets()["digits04_inverted"], 2))
        result = runner.invoke(cli, ["select", "--repo", repo.root, "--data", target, "--deploy", url])
        assert result.exit_code == 0, result.output
        assert f"deployed digits04_inverted to {url}: flashed, verified and active" in result.output
        info = json.loads(runner.invoke(cli, ["info", "--port", url, "--json"]).output)
        assert info["active"] and "digits04_inverted" in json.dumps(info["active"])
    finally:
        process.terminate()
        process.wait(timeout=10)
