"""OOD detection quality: the fingerprint score against max-softmax, energy and Mahalanobis.

For each data set, a classifier is trained on some classes (edgefp's `train`, fixed seeds); the
held-out test samples of those classes are in-distribution, the remaining classes are near-OOD and
shifted copies of the in-distribution test samples are far-OOD. OOD is the positive class: AUROC,
AUPR, and FPR at 95% TPR (share of in-distribution samples flagged when 95% of OOD are caught).
Every detector scores the same classifier; the fingerprint is scored in float and as the int8 bundle
`edgefp convert` makes of it. Also reports the cost of fingerprinting: wall time of
the fingerprint fit and the autoencoders' parameters against the classifier's.

    python benchmarks/ood_quality.py            # full: 3 seeds, every held-out class
    python benchmarks/ood_quality.py --quick    # one seed, one split: a smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

from benchmarks.common import save
from edgefp import data, metrics, shifts
from edgefp.bundle import Bundle
from edgefp.converter.convert import convert
from edgefp.trainer import train
from edgefp.trainer.baselines import BASELINES
from edgefp.trainer.train import HOLDOUT

SENSOR_SHIFTS = ("stuck", "gain", "noise", "reverse")


def experiments(quick: bool):
    """(data set, all its samples, in-distribution classes, far-OOD shifts) to run.

    The sensor sets' archive splits are tiny and uneven, so their train and test parts are pooled
    and split again (stratified, 60/40) for each seed.
    """
    digits = data.load("digits")
    runs = [("digits", digits, [0, 1, 2, 3, 4], ("gaussian", "invert", "blur", "stuck"))]
    for name in ("basic_motions", "arrow_head"):
        train_part, test_part = data.load(f"{name}:train"), data.load(f"{name}:test")
        pooled = data.Dataset(
            np.concatenate([train_part.x, test_part.x]), np.concatenate([train_part.y, test_part.y]), name
        )
        n_classes = len(np.unique(pooled.y))
        for unseen in range(1 if quick else n_classes):
            runs.append((name, pooled, [c for c in range(n_classes) if c != unseen], SENSOR_SHIFTS))
    return runs


def int8_bundle(fingerprint, calib: data.Dataset) -> Bundle:
    """The fingerprint converted as `edgefp convert` does, calibrated on the training data."""
    with tempfile.TemporaryDirectory(prefix="edgefp-ood-") as scratch:
        fingerprint.save(os.path.join(scratch, "run"))
        convert(os.path.join(scratch, "run"), calib, os.path.join(scratch, "bundle"))
        return Bundle.load(os.path.join(scratch, "bundle"))


def evaluate(dataset: data.Dataset, classes, far, seed) -> dict:
    if dataset.name == "digits":  # the built-in fixed split
        test = data.stratified_split(dataset.y, data.DIGITS_TEST_FRACTION, seed=0)
    else:
        test = data.stratified_split(dataset.y, 0.4, seed=seed)
    known = np.isin(dataset.y, classes)
    train_set, held_out = dataset.subset(known & ~test), dataset.subset(known & test)
    near = dataset.x[~known]
    cases = {"near": near, **{kind: shifts.apply(held_out.x, kind, seed=seed + 1) for kind in far}}

    fingerprint = train(train_set, seed=seed, progress=False)
    prepare = fingerprint.prepare
    fit_mask = ~data.stratified_split(train_set.y, HOLDOUT, seed)
    x_fit, y_fit = prepare(train_set.x[fit_mask]), np.searchsorted(fingerprint.label_values_, train_set.y[fit_mask])
    bundle = int8_bundle(fingerprint, train_set)
    detectors = {"fingerprint": fingerprint.score_samples, "fingerprint_int8": lambda x: bundle.score(x).ood_score}
    for name, baseline in BASELINES.items():
        fitted = baseline().fit(fingerprint.model_, x_fit, y_fit)
        detectors[name] = lambda x, fitted=fitted: fitted.score_samples(prepare(x))
    id_scores = {name: score(held_out.x) for name, score in detectors.items()}
    result = {
        "accuracy": float(np.mean(fingerprint.score(held_out.x).pred == held_out.y)),
        "id_flagged": float(np.mean(fingerprint.score(held_out.x).is_ood)),
        "fit_seconds": fingerprint.fit_seconds_,
        "classifier_params": int(fingerprint.model_.count_params()),
        "autoencoder_params": fingerprint.autoencoder_params(),
        "cases": {},
    }
    for case, x in cases.items():
        result["cases"][case] = {
            name: metrics.detection_report(id_scores[name], score(x)) for name, score in detectors.items()
        }
    return result


def average(results: list[dict]) -> dict:
    """Mean over runs of every number in the nested result dicts."""
    first = results[0]
    if isinstance(first, dict):
        return {key: average([r[key] for r in results]) for key in first}
    return float(np.mean(results))


def table(summary: dict) -> str:
    detectors = ["fingerprint", "fingerprint_int8", *BASELINES]
    lines = [
        "AUROC (FPR at 95% TPR in brackets); OOD is the positive class. Best per row in bold. "
        "fingerprint_int8: the same fingerprint converted to an int8 bundle, scored on LiteRT. "
        "AUPR is in the JSON file.",
        "",
        "| data set | case | " + " | ".join(detectors) + " |",
        "|---|---|" + "---|" * len(detectors),
    ]
    for dataset, result in summary.items():
        for case, rows in result["cases"].items():
            best = max(rows[d]["auroc"] for d in detectors)
            cells = []
            for d in detectors:
                text = f"{rows[d]['auroc']:.3f} ({rows[d]['fpr_at_95tpr']:.2f})"
                cells.append(f"**{text}**" if rows[d]["auroc"] == best else text)
            lines.append(f"| {dataset} | {case} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| data set | accuracy | ID flagged | fingerprint fit (s) | autoencoder / classifier params |",
        "|---|---|---|---|---|",
    ]
    for dataset, r in summary.items():
        ratio = r["autoencoder_params"] / r["classifier_params"]
        lines.append(
            f"| {dataset} | {r['accuracy']:.3f} | {r['id_flagged']:.3f} | {r['fit_seconds']:.1f} | "
            f"{r['autoencoder_params']:.0f} / {r['classifier_params']:.0f} = {ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed and one split per data set")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per split (default 3)")
    args = parser.parse_args(argv)
    seeds = [0] if args.quick else list(range(args.seeds))
    per_run: dict[str, list] = {}
    for name, dataset, classes, far in experiments(args.quick):
        for seed in seeds:
            print(f"{name}: classes {classes}, seed {seed}", file=sys.stderr)
            per_run.setdefault(name, []).append(evaluate(dataset, classes, far, seed))
    summary = {dataset: average(runs) for dataset, runs in per_run.items()}
    save(
        "ood_quality" + ("_quick" if args.quick else ""),
        {"seeds": seeds, "summary": summary, "runs": per_run},
        table(summary),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
