"""Model selection from unlabeled target data: the fingerprint match against a max-softmax baseline.

A benchmark repository is built in a temporary folder from bundles trained (fixed seeds) on distinct
domains: digits 0-4 as they are, inverted (`shifts` "invert"), rotated 90 degrees (`np.rot90` on
axes 1, 2) and with noise as strong as the signal (`shifts` "noise"), digits 5-9 (a different digit
subset), and the built-in sensor sets basic_motions, gun_point and arrow_head (train and test pooled,
then split stratified 60/40 as in ood_quality.py). The digit domains share digits 0-4 rather than
0-9 so that the subset domain (5-9) is distinct from the plain one rather than a part of it.

For each domain, unlabeled target sets of 20, 50 and 200 held-out samples (never used for training)
are drawn several times and `edgefp.selection.select` runs over the whole repository. Top-1 accuracy
is the share of draws whose verdict is the domain's model. The baseline picks, among the same
shape-compatible candidates, the one with the highest mean max-softmax probability on the target.
Targets that match no model (Gaussian-noise 8x8 images; random walks shaped like basic_motions and
like gun_point, scaled to the set's per-channel mean and std) should get `no suitable model`; the
baseline cannot abstain and always names a model.

Speed: the repository is filled to 100 bundles with renamed copies of the digit bundles (identical
models do identical work, which is fine for timing); selection time is measured against the number
of shape-compatible bundles and the number of target samples.

    python -m benchmarks.selection            # 8 domains, 5 draws, speed up to 100 bundles
    python -m benchmarks.selection --quick    # 4 domains, 2 draws, speed up to 20 bundles
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import save, trained
from edgefp import data, shifts
from edgefp.bundle import Bundle
from edgefp.converter.convert import convert
from edgefp.repository import Repository
from edgefp.selection import NO_MATCH, select

SIZES = (20, 50, 200)
GOAL_SIZE = 50
GOAL_SECONDS = 10.0
SENSOR_TEST_FRACTION = 0.4


# ----------------------------------------------------------------------------------------- domains
def rot90(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2))).astype(np.float32)


def digit_domains(quick: bool) -> dict:
    """name -> (training set, held-out target samples)."""
    train04, test04 = data.load("digits:train:0-4"), data.load("digits:test:0-4")
    domains = {
        "digits04": (train04, test04.x),
        "digits04_inverted": (
            data.Dataset(shifts.apply(train04.x, "invert"), train04.y, "digits 0-4 inverted"),
            shifts.apply(test04.x, "invert"),
        ),
        "digits59": (data.load("digits:train:5-9"), data.load("digits:test:5-9").x),
    }
    if not quick:
        domains["digits04_rot90"] = (data.Dataset(rot90(train04.x), train04.y, "digits 0-4 rot90"), rot90(test04.x))
        domains["digits04_noise"] = (
            data.Dataset(shifts.apply(train04.x, "noise", seed=1), train04.y, "digits 0-4 noise"),
            shifts.apply(test04.x, "noise", seed=2),
        )
    return domains


def sensor_domain(name: str):
    train_part, test_part = data.load(f"{name}:train"), data.load(f"{name}:test")
    x, y = np.concatenate([train_part.x, test_part.x]), np.concatenate([train_part.y, test_part.y])
    test = data.stratified_split(y, SENSOR_TEST_FRACTION, seed=0)
    return data.Dataset(x[~test], y[~test], name), x[test]


def domains(quick: bool) -> dict:
    found = digit_domains(quick)
    for name in ("basic_motions",) if quick else ("basic_motions", "gun_point", "arrow_head"):
        found[name] = sensor_domain(name)
    return found


def random_walk(like: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Random walks with ``like``'s shape, scaled to its per-channel mean and std: the shape fits, nothing else."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal((n, *like.shape[1:])), axis=1)
    walk = (walk - walk.mean(axis=(0, 1))) / walk.std(axis=(0, 1))
    return (like.mean(axis=(0, 1)) + like.std(axis=(0, 1)) * walk).astype(np.float32)


def unmatched(built: dict) -> dict:
    """Targets that match no model of the repository (each with 200 samples to draw from)."""
    rng = np.random.default_rng(0)
    found = {"gaussian_images_8x8": np.clip(rng.normal(0.3, 0.3, (200, 8, 8)), 0, 1).astype(np.float32)}
    for name in ("basic_motions", "gun_point"):
        if name in built:
            found[f"random_walk_{name}"] = random_walk(built[name][0].x, 200, seed=1)
    return found


# ----------------------------------------------------------------------------------------- build
def build(repo: Repository, found: dict, scratch: str, epochs: int | None) -> dict:
    """Train, fingerprint and convert a bundle per domain; add it to ``repo``. Returns build facts."""
    facts = {}
    for name, (train_set, target) in found.items():
        start = time.perf_counter()
        fingerprint = trained(train_set, seed=0, epochs=epochs)
        run_dir, out = os.path.join(scratch, f"run_{name}"), os.path.join(scratch, f"{name}.efp")
        fingerprint.save(run_dir)
        convert(run_dir, train_set, out, name=name)
        repo.add(out, {"domain": name})
        facts[name] = {
            "train_samples": len(train_set),
            "held_out": len(target),
            "input_shape": list(train_set.x.shape[1:]),
            "seconds": time.perf_counter() - start,
            "path": out,
        }
        print(f"built {name} in {facts[name]['seconds']:.1f} s", file=sys.stderr)
    return facts


# ----------------------------------------------------------------------------------------- quality
def draws_of(x: np.ndarray, size: int, draws: int, seed: int) -> tuple[int, list[np.ndarray]]:
    """``draws`` random subsets of ``size`` samples; every sample once when fewer are held out."""
    if len(x) <= size:
        return len(x), [x]
    rng = np.random.default_rng(seed)
    return size, [x[rng.choice(len(x), size, replace=False)] for _ in range(draws)]


def run_select(repo: Repository, x: np.ndarray) -> tuple[str, str, dict]:
    report = select(repo, x)
    baseline = max(report["candidates"], key=lambda c: c["mean_confidence"])["name"]
    return report["verdict"], baseline, report


def quality(repo: Repository, targets: dict, draws: int, expected_of) -> dict:
    results = {}
    for name, x in targets.items():
        rows = {}
        for size in SIZES:
            n, sets = draws_of(x, size, draws, seed=size)
            picks, baseline, scores = [], [], []
            for target in sets:
                verdict, base, report = run_select(repo, target)
                picks.append(verdict)
                baseline.append(base)
                mine = [c for c in report["candidates"] if c["name"] == name]
                wrong = [c["match_score"] for c in report["candidates"] if c["name"] != name]
                scores.append(
                    {
                        "right": mine[0]["match_score"] if mine else None,
                        "right_ood_share": mine[0]["ood_share"] if mine else None,
                        "right_ood_tolerance": mine[0]["ood_tolerance"] if mine else None,
                        "best_wrong": min(wrong) if wrong else None,
                        "candidates": len(report["candidates"]),
                    }
                )
            expected = expected_of(name)
            rows[size] = {
                "n": n,
                "draws": len(sets),
                "fingerprint_correct": sum(p == expected for p in picks) / len(sets),
                "baseline_correct": sum(b == expected for b in baseline) / len(sets),
                "fingerprint_picks": picks,
                "baseline_picks": baseline,
                "scores": scores,
            }
        results[name] = rows
    return results


# ----------------------------------------------------------------------------------------- speed
def fill(repo: Repository, paths: list[str], total: int, scratch: str) -> None:
    """Add renamed copies of ``paths`` until ``repo`` holds ``total`` shape-compatible bundles."""
    have = len(repo.entries()) if repo.exists() else 0
    for i in range(have, total):
        source = paths[i % len(paths)]
        bundle = Bundle.load(source)
        name = f"copy{i:03d}_{bundle.manifest.name}"
        bundle.manifest = dataclasses.replace(bundle.manifest, name=name)
        out = os.path.join(scratch, f"{name}.efp")
        bundle.write(out)
        repo.add(out, {"domain": "copy"})


def timed(repo: Repository, x: np.ndarray, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        select(repo, x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def speed(paths: list[str], x: np.ndarray, counts: tuple[int, ...], scratch: str, repeats: int) -> dict:
    """Selection seconds (median of ``repeats``) by number of bundles (200 samples) and of samples (most bundles)."""
    repo = Repository(os.path.join(scratch, "speed_repo"))
    by_bundles = {}
    for count in counts:
        fill(repo, paths, count, scratch)
        by_bundles[count] = timed(repo, x[:200], repeats)
        print(f"speed: {count} bundles, 200 samples: {by_bundles[count]:.2f} s", file=sys.stderr)
    by_samples = {n: timed(repo, x[:n], repeats) for n in SIZES}
    return {"bundles": by_bundles, "samples": by_samples, "max_bundles": counts[-1], "repeats": repeats}


# ----------------------------------------------------------------------------------------- report
def table(results: dict) -> str:
    lines = [
        "Top-1 selection accuracy over the whole repository (draws of unlabeled held-out samples); "
        "fingerprint = `edgefp select` verdict, baseline = highest mean max-softmax confidence among "
        "shape-compatible candidates. n is the target size used (all held-out samples when fewer than "
        "asked; then one draw).",
        "",
        f"Repository: {len(results['build'])} bundles, built in {results['build_seconds']:.0f} s "
        f"(classifier epochs: {results['epochs'] or 'auto'}).",
        "",
        "| domain | candidates | " + " | ".join(f"n={s}: fingerprint / baseline" for s in SIZES) + " |",
        "|---|---|" + "---|" * len(SIZES),
    ]
    for name, rows in results["quality"].items():
        cells = []
        for size in SIZES:
            r = rows[size]
            note = f" (n={r['n']}, {r['draws']} draw)" if r["n"] != size else ""
            cells.append(f"{r['fingerprint_correct']:.0%} / {r['baseline_correct']:.0%}{note}")
        candidates = rows[SIZES[0]]["scores"][0]["candidates"]
        lines.append(f"| {name} | {candidates} | " + " | ".join(cells) + " |")
    totals = results["totals"]
    lines.append(
        "| **all domains** | | "
        + " | ".join(f"**{totals[s]['fingerprint']:.0%} / {totals[s]['baseline']:.0%}**" for s in SIZES)
        + " |"
    )
    lines += [
        "",
        "Targets that match no model: share of draws answered `no suitable model` (the baseline cannot "
        "abstain; the model it names instead is given).",
        "",
        "| target | " + " | ".join(f"n={s}" for s in SIZES) + " | baseline picks (n=50) |",
        "|---|" + "---|" * len(SIZES) + "---|",
    ]
    for name, rows in results["unmatched"].items():
        cells = [f"{rows[s]['fingerprint_correct']:.0%}" for s in SIZES]
        picks = sorted(set(rows[GOAL_SIZE]["baseline_picks"]))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {', '.join(picks)} |")
    timing = results["speed"]
    lines += [
        "",
        f"Selection time (s, median of {timing['repeats']}; every bundle shape-compatible, so every one "
        f"is verified and scored):",
        "",
        "| bundles (200 samples) | " + " | ".join(str(c) for c in timing["bundles"]) + " |",
        "|---|" + "---|" * len(timing["bundles"]),
        "| seconds | " + " | ".join(f"{t:.2f}" for t in timing["bundles"].values()) + " |",
        "",
        f"| samples ({timing['max_bundles']} bundles) | " + " | ".join(str(n) for n in timing["samples"]) + " |",
        "|---|" + "---|" * len(timing["samples"]),
        "| seconds | " + " | ".join(f"{t:.2f}" for t in timing["samples"].values()) + " |",
        "",
    ]
    goals = results["goals"]
    lines.append(
        f"Goals: 100% top-1 at n={GOAL_SIZE} on distinct domains: "
        f"{'met' if goals['top1_at_50'] else 'missed'} ({totals[GOAL_SIZE]['fingerprint']:.0%}); "
        f"`no suitable model` for unmatched targets: {'met' if goals['no_match'] else 'missed'}; "
        f"{timing['max_bundles']} bundles x 200 samples under {GOAL_SECONDS:.0f} s: "
        f"{'met' if goals['speed'] else 'missed'} ({timing['bundles'][timing['max_bundles']]:.2f} s)."
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 domains, 2 draws, speed up to 20 bundles")
    parser.add_argument("--draws", type=int, default=None, help="random draws per target size (default 5; 2 quick)")
    parser.add_argument("--epochs", type=int, default=None, help="classifier epochs (default 40; 20 quick)")
    args = parser.parse_args(argv)
    draws = args.draws or (2 if args.quick else 5)
    epochs = args.epochs or (20 if args.quick else 40)
    counts = (5, 10, 20) if args.quick else (10, 25, 50, 100)
    with tempfile.TemporaryDirectory(prefix="edgefp-selection-") as scratch:
        found = domains(args.quick)
        repo = Repository(os.path.join(scratch, "repo"))
        start = time.perf_counter()
        facts = build(repo, found, scratch, epochs)
        build_seconds = time.perf_counter() - start
        targets = {name: target for name, (_, target) in found.items()}
        quality_rows = quality(repo, targets, draws, lambda name: name)
        no_match = quality(repo, unmatched(found), draws, lambda name: NO_MATCH)
        digit_paths = [facts[name]["path"] for name in facts if name.startswith("digits")]
        timing = speed(digit_paths, found["digits04"][1], counts, scratch, repeats=1 if args.quick else 3)
    totals = {}
    for size in SIZES:
        rows = [rows[size] for rows in quality_rows.values()]
        totals[size] = {
            "fingerprint": float(np.mean([r["fingerprint_correct"] for r in rows])),
            "baseline": float(np.mean([r["baseline_correct"] for r in rows])),
        }
    for fact in facts.values():
        del fact["path"]
    results = {
        "quick": args.quick,
        "draws": draws,
        "epochs": epochs,
        "build": facts,
        "build_seconds": build_seconds,
        "quality": quality_rows,
        "totals": totals,
        "unmatched": no_match,
        "speed": timing,
        "goals": {
            "top1_at_50": totals[GOAL_SIZE]["fingerprint"] == 1.0,
            "no_match": all(rows[s]["fingerprint_correct"] == 1.0 for rows in no_match.values() for s in SIZES),
            "speed": timing["bundles"][counts[-1]] < GOAL_SECONDS,
        },
    }
    save("selection" + ("_quick" if args.quick else ""), results, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
