"""OOD detection quality: the fingerprint (float and as the int8 bundle) against MSP, energy, Mahalanobis,
relative Mahalanobis and KNN, on the same classifier, over many splits and seeds, with bootstrap intervals.

For each data set and split, a classifier is trained on some classes (edgefp's `train`); the held-out
test samples of those classes are in-distribution, the remaining classes are near-OOD, and shifted
copies of the in-distribution test samples are far-OOD (`edgefp/shifts.py`). OOD is the positive class:
AUROC, AUPR, and FPR at 95 % TPR (share of in-distribution samples flagged when 95 % of OOD are caught).
Every detector scores the same classifier on the same preprocessed inputs; the fingerprint is scored in
float and as the int8 bundle `edgefp convert` makes of it (LiteRT).

Splits: digits, every class held out as half of a 5-of-10 split: 12 splits drawn at random (fixed
generator) and their 12 complements (24 of the 252; each digit is in-distribution in 12 of them);
basic_motions and arrow_head, each class held out in turn; gun_point (two classes) far-OOD only; the
vector template on scikit-learn's wine (13 chemical measurements) and iris (4 flower measurements),
each class held out in turn, and breast_cancer (30 measurements of a cell image, two classes: far-OOD
only), with the faults of a sensor that has no time axis.
Intervals: 95 % percentile bootstrap over the runs (splits x seeds) of a data set, 2,000 resamples;
`vs best` is the paired difference of the int8 fingerprint to the baseline with the best mean.
int8 against float, split in two: the float evidence is computed again from the int8 model's own
features and class means (what its autoencoders read, their offset correction included) and logits,
and scored as the bundle is recalibrated; its difference to float is the int8 classifier's rounding,
the bundle's difference to it the quantisation of the autoencoders and their errors.
Ablation: the float fingerprint's score recombined without each kind of evidence, with one minus the
largest probability in the max logit's place, or with every piece of evidence weighing the same.

    python -m benchmarks.ood_quality            # full: 24 digits splits x 2 seeds, other splits x 5 seeds
    python -m benchmarks.ood_quality --quick    # one split and seed per data set with near-OOD: a smoke test
    python -m benchmarks.ood_quality --sets wine,iris   # some data sets: results/ood_quality_wine_iris.md
    python -m benchmarks.ood_quality --adversarial   # also FGSM, PGD and adaptive PGD against every classifier
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks import adversarial_summary
from benchmarks.common import save, trained, vector_set
from edgefp import data, metrics, ood, shifts
from edgefp.bundle import Bundle
from edgefp.converter.convert import convert, residual_inputs
from edgefp.runtime import litert_interpreter, read_tensors
from edgefp.trainer import taps
from edgefp.trainer.baselines import BASELINES
from edgefp.trainer.fingerprint import AUTOENCODER, MAX_LOGIT
from edgefp.trainer.train import HOLDOUT

SENSOR_SHIFTS = ("stuck", "gain", "noise", "reverse")
VECTOR_SHIFTS = ("stuck", "gain", "noise", "invert")
VECTOR_SETS = ("wine", "iris", "breast_cancer")
SETS = ("digits", "basic_motions", "arrow_head", "gun_point", *VECTOR_SETS)
IMAGE_SHIFTS = ("gaussian", "invert", "blur", "stuck")
DIGITS_DRAWN = 12  # random 5-of-10 digit splits; with their complements, 24 splits
BOOTSTRAP = 2000
DETECTORS = ["fingerprint", "fingerprint_int8", *BASELINES]
INT8_CLASSIFIER = "fingerprint_int8_classifier"  # float evidence from the int8 model's features and logits
MAX_SOFTMAX = "max_softmax"
LARGEST = "largest"
ABLATION = {
    "all evidence": (),
    "autoencoders only": (MAX_LOGIT,),
    "max logit only": (AUTOENCODER,),
    "max-softmax for max logit": (MAX_SOFTMAX,),
    "weighted per evidence": ("per_evidence",),
    "largest autoencoder": (LARGEST,),
}


def digits_splits(drawn: int) -> list[tuple[int, ...]]:
    """``drawn`` random 5-of-10 digit splits (0-4 first) and their complements."""
    rng = np.random.default_rng(2024)
    splits = [(0, 1, 2, 3, 4)]
    while len(splits) < drawn:
        split = tuple(sorted(int(c) for c in rng.choice(10, 5, replace=False)))
        complement = tuple(c for c in range(10) if c not in split)
        if split not in splits and complement not in splits:
            splits.append(split)
    return splits + [tuple(c for c in range(10) if c not in split) for split in splits]


def pooled(name: str) -> data.Dataset:
    """A sensor set's archive train and test parts together (they are tiny and uneven; each seed splits again)."""
    train_part, test_part = data.load(f"{name}:train"), data.load(f"{name}:test")
    return data.Dataset(np.concatenate([train_part.x, test_part.x]), np.concatenate([train_part.y, test_part.y]), name)


def experiments(quick: bool, seeds: int, digits_drawn: int, sets: list[str]) -> list[tuple]:
    """(data set name, all its samples, in-distribution classes, far-OOD shifts, seed) for every run."""
    runs = []
    if "digits" in sets:
        digits = data.load("digits")
        for split in digits_splits(digits_drawn)[: 1 if quick else None]:
            runs += [("digits", digits, list(split), IMAGE_SHIFTS, seed) for seed in range(1 if quick else seeds)]
    for name in SETS:
        if name == "digits" or name not in sets or (quick and name == "gun_point"):
            continue
        dataset, far = (vector_set(name), VECTOR_SHIFTS) if name in VECTOR_SETS else (pooled(name), SENSOR_SHIFTS)
        classes = sorted(int(c) for c in np.unique(dataset.y))
        held_out = [None] if len(classes) < 3 else classes[: 1 if quick else None]
        for unseen in held_out:
            known = [c for c in classes if c != unseen]
            runs += [(name, dataset, known, far, seed) for seed in range(1 if quick else seeds)]
    return runs


def int8_bundle(fingerprint, calib: data.Dataset) -> Bundle:
    """The fingerprint converted as `edgefp convert` does, calibrated on the training data."""
    with tempfile.TemporaryDirectory(prefix="edgefp-ood-") as scratch:
        fingerprint.save(os.path.join(scratch, "run"))
        convert(os.path.join(scratch, "run"), calib, os.path.join(scratch, "bundle"))
        return Bundle.load(os.path.join(scratch, "bundle"))


def int8_classifier_evidence(fingerprint, bundle: Bundle):
    """A function of raw samples: the float fingerprint's evidence (N, L) computed from the int8 bundle's
    own tensors, dequantised: the pooled, standardised features its autoencoders read and the class means
    they are read against (:func:`edgefp.converter.convert.residual_inputs`, the features' offset
    correction included), and its logits (the input of the SOFTMAX that gives the probabilities), read
    from LiteRT. It differs from the float evidence by the rounding of the int8 classifier, of its pooled
    features and of the class means, and from the bundle's by the quantisation of the autoencoders and
    their errors."""
    interpreter = litert_interpreter(bundle.model_bytes, experimental_preserve_all_tensors=True)
    features, means = residual_inputs(interpreter, bundle.manifest.outputs.probs.index)
    probs = interpreter.get_output_details()[bundle.manifest.outputs.probs.index]["index"]
    (logits,) = [op["inputs"][0] for op in interpreter._get_ops_details() if op["outputs"][0] == probs]

    has_max_logit = MAX_LOGIT in [layer.kind for layer in fingerprint.layers_]

    def evidence(x):
        read = read_tensors(interpreter, bundle.quantize(x), [features, means, logits])
        values = fingerprint.residual_errors_.predict(read[:2], verbose=0, batch_size=256)
        values = values if isinstance(values, list) else [values]
        max_logit = [read[2].max(axis=1)] if has_max_logit else []
        return np.column_stack([*(v[:, 0] for v in values), *max_logit]).astype(np.float64)

    return evidence


def ablation_evidence(fingerprint):
    """A function of raw samples and their float scores -> (evidence values, kinds, transforms, z_mean, z_std):
    the fingerprint's own, with the classifier's max logit after them where the fingerprint leaves it out
    (a vector classifier whose input is watched: docs/fingerprint.md; its z statistics from the held-out
    samples), so that the ablation can weigh it in or out everywhere."""
    import keras

    z_mean, z_std, _ = fingerprint.z_stats_()
    kinds, transforms = [layer.kind for layer in fingerprint.layers_], list(fingerprint.transforms_)
    if MAX_LOGIT in kinds:
        return lambda x, scores: (scores.layer_errors, kinds, transforms, z_mean, z_std)
    logits = keras.Model(fingerprint.model_.inputs, taps.logits_and_probs(fingerprint.model_)[0])

    def max_logit(x):
        return logits.predict(fingerprint.prepare(x), verbose=0, batch_size=256).max(axis=1, keepdims=True)

    held_mean, held_std = ood.z_stats(max_logit(fingerprint.holdout_x_).astype(np.float64), ["negate"])
    z_mean, z_std = np.append(z_mean, held_mean), np.append(z_std, held_std)
    return lambda x, scores: (
        np.column_stack([scores.layer_errors, max_logit(x)]),
        [*kinds, MAX_LOGIT],
        [*transforms, "negate"],
        z_mean,
        z_std,
    )


def ablated(evidence, scores, holdout, change: tuple[str, ...]) -> np.ndarray:
    """The float fingerprint's score of samples (their ``evidence``, :func:`ablation_evidence`, and float
    ``scores``) recombined from every kind of evidence: without the kinds in ``change`` (the remaining
    kinds weigh the same again), with one minus the largest probability in the max logit's place
    (MAX_SOFTMAX; its z statistics from the ``holdout`` scores), with every piece of evidence weighing the
    same (``per_evidence``), or with the largest of the autoencoders' parts counting for the kind
    (LARGEST) rather than their mean."""
    values, kinds, transforms, z_mean, z_std = evidence
    values, transforms = values.copy(), list(transforms)
    if MAX_SOFTMAX in change:
        j = kinds.index(MAX_LOGIT)
        held = np.log(1.0 - holdout.probs.max(axis=1) + ood.EPS)
        values[:, j], transforms[j] = 1.0 - scores.probs.max(axis=1), "log"
        z_mean, z_std = z_mean.copy(), z_std.copy()
        z_mean[j], z_std[j] = held.mean(), max(held.std(), 1e-3)
    if LARGEST in change:
        z = np.maximum(ood.zscores(values, z_mean, z_std, transforms), 0.0)
        autoencoders = np.asarray(kinds) == AUTOENCODER
        return 0.5 * z[:, autoencoders].max(axis=1) + 0.5 * z[:, ~autoencoders].mean(axis=1)
    keep = [j for j, kind in enumerate(kinds) if kind not in change]
    kept = [kinds[j] for j in keep]
    weights = [1.0 / len(keep) if "per_evidence" in change else 1.0 / (kept.count(k) * len(set(kept))) for k in kept]
    return ood.ood_score(values[:, keep], z_mean[keep], z_std[keep], weights, [transforms[j] for j in keep])


def split(dataset: data.Dataset, classes, seed: int) -> tuple[data.Dataset, data.Dataset, np.ndarray]:
    """A run's training set and in-distribution test set (samples of ``classes``), and the mask of those
    classes' samples: digits by the built-in fixed split, any other set 40 % held out per class by ``seed``."""
    if dataset.name == "digits":
        test = data.stratified_split(dataset.y, data.DIGITS_TEST_FRACTION, seed=0)
    else:
        test = data.stratified_split(dataset.y, 0.4, seed=seed)
    known = np.isin(dataset.y, classes)
    return dataset.subset(known & ~test), dataset.subset(known & test), known


def evaluate(dataset: data.Dataset, classes, far, seed, attacks: str | None = None) -> dict:
    """One run: train, convert, score every detector on the in-distribution test set and each OOD case;
    with ``attacks`` (``full`` or ``quick``), on adversarial samples too."""
    train_set, held_out, known = split(dataset, classes, seed)
    cases = {"near": dataset.x[~known]} if (~known).any() else {}
    cases.update({kind: shifts.apply(held_out.x, kind, seed=seed + 1) for kind in far})

    fingerprint = trained(train_set, seed=seed)
    prepare = fingerprint.prepare
    fit_mask = ~data.stratified_split(train_set.y, HOLDOUT, seed)
    x_fit, y_fit = prepare(train_set.x[fit_mask]), np.searchsorted(fingerprint.label_values_, train_set.y[fit_mask])
    bundle = int8_bundle(fingerprint, train_set)
    detectors = {"fingerprint_int8": lambda x: bundle.score(x).ood_score}
    for name, baseline in BASELINES.items():
        fitted = baseline().fit(fingerprint.model_, x_fit, y_fit)
        detectors[name] = lambda x, fitted=fitted: fitted.ood_score(prepare(x))
    weights, transforms = [layer.weight for layer in fingerprint.layers_], fingerprint.transforms_
    int8_classifier = int8_classifier_evidence(fingerprint, bundle)
    z_mean, z_std = ood.z_stats(int8_classifier(fingerprint.holdout_x_), transforms)
    scored = {
        **detectors,
        INT8_CLASSIFIER: lambda x: ood.ood_score(int8_classifier(x), z_mean, z_std, weights, transforms),
    }
    id_float, holdout = fingerprint.score(held_out.x), fingerprint.score(fingerprint.holdout_x_)
    evidence = ablation_evidence(fingerprint)
    id_evidence = evidence(held_out.x, id_float)
    id_scores = {name: score(held_out.x) for name, score in scored.items()}
    result = {
        "classes": [int(c) for c in classes],
        "seed": seed,
        "accuracy": float(np.mean(id_float.pred == held_out.y)),
        "id_flagged": float(np.mean(id_float.is_ood)),
        "id_flagged_int8": float(np.mean(bundle.score(held_out.x).is_ood)),
        "train_seconds": fingerprint.train_seconds_,
        "fit_seconds": fingerprint.fit_seconds_,
        "classifier_params": int(fingerprint.model_.count_params()),
        "fingerprint_params": fingerprint.fingerprint_params(),
        "cases": {},
        "ablation": {},
    }
    for case, x in cases.items():
        ood_float = fingerprint.score(x)
        rows = {"fingerprint": metrics.detection_report(id_float.ood_score, ood_float.ood_score)}
        rows.update({name: metrics.detection_report(id_scores[name], score(x)) for name, score in scored.items()})
        result["cases"][case] = rows
        ood_evidence = evidence(x, ood_float)
        result["ablation"][case] = {
            name: metrics.auroc(
                ablated(id_evidence, id_float, holdout, without), ablated(ood_evidence, ood_float, holdout, without)
            )
            for name, without in ABLATION.items()
        }
    if attacks:
        result["adversarial"] = adversarial_summary.run(
            fingerprint, held_out, detectors, bundle, seed, attacks == "quick"
        )
    return result


def interval(values, rng) -> tuple[float, float, float]:
    """Mean of ``values`` and its 95 % percentile bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summarise(runs: list[dict]) -> dict:
    """Per case: every detector's mean AUROC/AUPR/FPR with a bootstrap interval over the runs; the paired
    difference of the int8 fingerprint to the best baseline; the int8-float gap; and the ablation."""
    rng = np.random.default_rng(0)
    summary = {"runs": len(runs), "cases": {}, "ablation": {}}
    for key in ("accuracy", "id_flagged", "id_flagged_int8", "fit_seconds"):
        summary[key] = float(np.mean([r[key] for r in runs]))
    timed = [r["train_seconds"] for r in runs if r["train_seconds"] is not None]  # None: a kept RUN, time unknown
    summary["train_seconds"] = float(np.mean(timed)) if timed else None
    summary["params_ratio"] = float(np.mean([r["fingerprint_params"] / r["classifier_params"] for r in runs]))
    for case in runs[0]["cases"]:
        auroc = {d: [r["cases"][case][d]["auroc"] for r in runs] for d in [*DETECTORS, INT8_CLASSIFIER]}
        row = {
            d: {
                "auroc": interval(auroc[d], rng),
                "aupr": float(np.mean([r["cases"][case][d]["aupr"] for r in runs])),
                "fpr_at_95tpr": float(np.mean([r["cases"][case][d]["fpr_at_95tpr"] for r in runs])),
            }
            for d in DETECTORS
        }
        best = max(BASELINES, key=lambda d: np.mean(auroc[d]))
        gap = np.subtract(auroc["fingerprint_int8"], auroc["fingerprint"])
        per_split = {}
        for r, g in zip(runs, gap):
            per_split.setdefault(tuple(r["classes"]), []).append(g)
        row["best_baseline"] = best
        row["int8_vs_best"] = interval(np.subtract(auroc["fingerprint_int8"], auroc[best]), rng)
        row["int8_minus_float"] = interval(gap, rng)
        row["worst_split_int8_minus_float"] = float(min(np.mean(v) for v in per_split.values()))
        row["int8_classifier_minus_float"] = interval(np.subtract(auroc[INT8_CLASSIFIER], auroc["fingerprint"]), rng)
        row["int8_minus_int8_classifier"] = interval(
            np.subtract(auroc["fingerprint_int8"], auroc[INT8_CLASSIFIER]), rng
        )
        summary["cases"][case] = row
        summary["ablation"][case] = {
            name: interval([r["ablation"][case][name] for r in runs], rng) for name in ABLATION
        }
    return summary


def _cell(stat) -> str:
    mean, low, high = stat
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def table(summary: dict) -> str:
    lines = [
        "AUROC, mean over runs [95 % bootstrap interval]; OOD is the positive class. Best mean per row in bold.",
        "fingerprint_int8: the same fingerprint as the int8 bundle on LiteRT. `int8 - best`: paired difference of",
        "fingerprint_int8 to the baseline with the best mean (named). FPR at 95 % TPR and AUPR are in the JSON file.",
        "",
        "| data set | case | runs | " + " | ".join(DETECTORS) + " | int8 - best |",
        "|---|---|---|" + "---|" * (len(DETECTORS) + 1),
    ]
    for dataset, result in summary.items():
        for case, row in result["cases"].items():
            top = max(row[d]["auroc"][0] for d in DETECTORS)
            cells = [
                f"**{_cell(row[d]['auroc'])}**" if row[d]["auroc"][0] == top else _cell(row[d]["auroc"])
                for d in DETECTORS
            ]
            best = f"{_cell(row['int8_vs_best'])} ({row['best_baseline']})"
            lines.append(f"| {dataset} | {case} | {result['runs']} | " + " | ".join(cells) + f" | {best} |")
    lines += [
        "",
        "int8 against float (fingerprint_int8 - fingerprint AUROC): mean over runs [interval], and the worst split",
        "(mean over its seeds); split in two by the float evidence computed from the int8 model's own features,",
        "class means and logits (int8 classifier): what the int8 classifier's rounding costs, and what the",
        "quantisation of the autoencoders and their errors costs.",
        "",
        "| data set | case | int8 - float | worst split | int8 classifier - float | int8 - int8 classifier |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, result in summary.items():
        for case, row in result["cases"].items():
            worst = row["worst_split_int8_minus_float"]
            parts = f"{_cell(row['int8_classifier_minus_float'])} | {_cell(row['int8_minus_int8_classifier'])}"
            lines.append(f"| {dataset} | {case} | {_cell(row['int8_minus_float'])} | {worst:+.3f} | {parts} |")
    lines += [
        "",
        "Ablation (float fingerprint AUROC, mean [interval]): the score recombined from some of its evidence, with",
        "max-softmax (one minus the largest probability) for the max logit, weighted per evidence, not per kind,",
        "or with the largest of the autoencoders' positive z counting for their kind rather than their mean.",
        "",
        "| data set | case | " + " | ".join(ABLATION) + " |",
        "|---|---|" + "---|" * len(ABLATION),
    ]
    for dataset, result in summary.items():
        for case, row in result["ablation"].items():
            lines.append(f"| {dataset} | {case} | " + " | ".join(_cell(row[name]) for name in ABLATION) + " |")
    lines += [
        "",
        "| data set | runs | accuracy | ID flagged float / int8 | train + fingerprint (s) | fingerprint fit (s) "
        "| fingerprint / classifier params |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, r in summary.items():
        train = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}"
        lines.append(
            f"| {dataset} | {r['runs']} | {r['accuracy']:.3f} | {r['id_flagged']:.3f} / {r['id_flagged_int8']:.3f} | "
            f"{train} | {r['fit_seconds']:.1f} | {r['params_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one split and seed per data set with near-OOD")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per split (default: 2 digits, 5 others)")
    parser.add_argument("--digits-splits", type=int, default=DIGITS_DRAWN, help="random digits splits drawn")
    parser.add_argument("--sets", default=",".join(SETS), help="data sets to run")
    parser.add_argument(
        "--adversarial", action="store_true", help="also attack every run's classifier (FGSM, PGD, adaptive PGD)"
    )
    args = parser.parse_args(argv)
    sets = args.sets.split(",")
    started = time.monotonic()
    per_set: dict[str, list] = {}
    plan = []
    for name in sets:
        seeds = args.seeds or (2 if name == "digits" else 5)
        plan += experiments(args.quick, seeds, args.digits_splits, [name])
    attacks = ("quick" if args.quick else "full") if args.adversarial else None
    for i, (name, dataset, classes, far, seed) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {name}: classes {classes}, seed {seed}", file=sys.stderr, flush=True)
        per_set.setdefault(name, []).append(evaluate(dataset, classes, far, seed, attacks))
    summary = {name: summarise(runs) for name, runs in per_set.items()}
    markdown = table(summary)
    if args.adversarial:
        for name, runs in per_set.items():
            summary[name]["adversarial"] = adversarial_summary.summarise([r["adversarial"] for r in runs])
        markdown += "\n" + adversarial_summary.table({name: s["adversarial"] for name, s in summary.items()})
    chosen = "" if tuple(sets) == SETS else "_" + "_".join(sets)  # a subset's results beside the full run's
    save(
        "ood_quality" + chosen + ("_adversarial" if args.adversarial else "") + ("_quick" if args.quick else ""),
        {"seconds": time.monotonic() - started, "summary": summary, "runs": per_set},
        markdown,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
