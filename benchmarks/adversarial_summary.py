"""The adversarial part of the OOD-quality benchmark (``python -m benchmarks.ood_quality --adversarial``):
each run's :func:`edgefp.adversarial.evaluate`, summarised over the runs of a data set and drawn as tables."""

from __future__ import annotations

import numpy as np

from edgefp import adversarial

RUNTIMES = ("litert", "tflm", "firmware")


def run(fingerprint, held_out, detectors: dict, bundle, seed: int, quick: bool) -> dict:
    """One run's attacks on its in-distribution test samples, scored by every detector and runtime."""
    return adversarial.evaluate(
        fingerprint,
        held_out.x,
        held_out.y,
        detectors=detectors,
        bundle=bundle,
        runtimes=RUNTIMES,
        budgets=adversarial.QUICK_BUDGETS if quick else adversarial.BUDGETS,
        steps=adversarial.QUICK_PGD_STEPS if quick else adversarial.PGD_STEPS,
        seed=seed,
    )


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarise(results: list[dict]) -> dict:
    """Per attack and budget, the mean over runs of every figure (AUROCs over the runs with a success)."""
    summary = {}
    for kind, rows in results[0]["attacks"].items():
        for i, first in enumerate(rows):
            same = [r["attacks"][kind][i] for r in results]
            summary.setdefault(kind, []).append(
                {
                    "budget": first["budget"],
                    "accuracy": _mean(r["accuracy"] for r in same),
                    "success": _mean(r["success"] for r in same),
                    "mean_score": _mean(r["mean_score"] for r in same),
                    "detectors": {
                        d: {k: _mean(r["detectors"][d][k] for r in same) for k in first["detectors"][d]}
                        for d in first["detectors"]
                    },
                    "runtimes": {
                        rt: {k: _mean(r["runtimes"][rt][k] for r in same) for k in first["runtimes"][rt]}
                        for rt in first["runtimes"]
                    },
                }
            )
    return {"clean_accuracy": _mean(r["accuracy"] for r in results), "attacks": summary}


def _f(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def table(summary: dict) -> str:
    """Markdown: success and AUROC per detector; undetected success; the int8 bundle on each runtime."""
    first = next(iter(summary.values()))["attacks"]
    detectors = list(first[adversarial.ATTACKS[0]][0]["detectors"])
    runtimes = list(first[adversarial.ATTACKS[0]][0]["runtimes"])
    rows = [(name, kind, row) for name, s in summary.items() for kind, rows in s["attacks"].items() for row in rows]
    lines = [
        "Adversarial samples (L-infinity, budget = share of each channel's range) of the in-distribution test",
        "samples, crafted on the float classifier. success: share of correct predictions turned wrong. AUROC:",
        "clean test samples against the successful adversarial ones. Means over runs.",
        "",
        "| data set | attack | budget | accuracy | success | " + " | ".join(detectors) + " |",
        "|---|---|---|---|---|" + "---|" * len(detectors),
    ]
    for name, kind, row in rows:
        cells = [_f(row["detectors"][d]["auroc"]) for d in detectors]
        lines.append(
            f"| {name} | {kind} | {row['budget']:g} | {row['accuracy']:.3f} | {row['success']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        f"Undetected success: share of correct predictions turned wrong and not flagged, every detector at "
        f"{adversarial.DETECTION_FPR:.0%} false positives on the clean test samples; `own threshold`: the "
        "fingerprint's calibrated threshold, as the device decides.",
        "",
        "| data set | attack | budget | success | " + " | ".join(detectors) + " | fingerprint, own threshold |",
        "|---|---|---|---|" + "---|" * (len(detectors) + 1),
    ]
    for name, kind, row in rows:
        cells = [_f(row["detectors"][d]["undetected_at_fpr"]) for d in detectors]
        own = _f(row["detectors"]["fingerprint"]["undetected_at_threshold"])
        lines.append(
            f"| {name} | {kind} | {row['budget']:g} | {row['success']:.3f} | " + " | ".join(cells) + f" | {own} |"
        )
    lines += [
        "",
        "The same adversarial samples on the int8 bundle, per runtime: success (its own correct predictions turned",
        "wrong), AUROC, undetected success at its threshold, and the share of scores identical to the first runtime's.",
        "",
        "| data set | attack | budget | float: success / undetected | "
        + " | ".join(f"{rt}: success / AUROC / undetected" for rt in runtimes)
        + " | "
        + " | ".join(f"{rt} = {runtimes[0]}" for rt in runtimes[1:])
        + " |",
        "|---|---|---|---|" + "---|" * (2 * len(runtimes) - 1),
    ]
    for name, kind, row in rows:
        fp = row["detectors"]["fingerprint"]
        cells = [
            f"{_f(r['success'])} / {_f(r['auroc'])} / {_f(r['undetected_at_threshold'])}"
            for r in (row["runtimes"][rt] for rt in runtimes)
        ]
        same = [_f(row["runtimes"][rt]["same_as_first_runtime"]) for rt in runtimes[1:]]
        lines.append(
            f"| {name} | {kind} | {row['budget']:g} | {row['success']:.3f} / {_f(fp['undetected_at_threshold'])} | "
            + " | ".join(cells + same)
            + " |"
        )
    return "\n".join(lines) + "\n"
