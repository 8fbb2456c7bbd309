"""`edgefp demo`: the kit end to end on the built-in digits."""

from __future__ import annotations

import os

from edgefp import data, metrics, shifts

ID_CLASSES = "0-4"
UNSEEN_CLASSES = "5-9"
CORRUPTIONS = ("gaussian", "invert", "blur", "stuck")


def run_demo(out: str, *, seed: int = 0, progress: bool = True) -> dict:
    """Train on digits 0-4 and fingerprint; convert to an int8 bundle; score held-out 0-4, unseen 5-9
    and corrupted 0-4 with both.

    Writes the RUN, the bundle and one score file per set and model under ``out``; returns a table
    of accuracy, share flagged OOD and AUROC against the held-out 0-4, float and int8 side by side.
    """
    from edgefp.bundle import Bundle
    from edgefp.cli import summarize_scores
    from edgefp.converter.convert import convert
    from edgefp.trainer import train

    run_dir, bundle_dir = os.path.join(out, "run"), os.path.join(out, "bundle")
    fingerprint = train(data.load(f"digits:train:{ID_CLASSES}"), seed=seed, progress=progress)
    fingerprint.save(run_dir, force=True)
    unseen = data.load(f"digits:test:{UNSEEN_CLASSES}")
    manifest = convert(run_dir, data.load(f"digits:train:{ID_CLASSES}"), bundle_dir, ood_data=unseen, force=True)
    bundle = Bundle.load(bundle_dir)
    held_out = data.load(f"digits:test:{ID_CLASSES}")
    sets = [("held-out 0-4", held_out), ("unseen digits 5-9", unseen)]
    sets += [
        (f"0-4 {kind}", data.Dataset(shifts.apply(held_out.x, kind, seed), held_out.y, kind)) for kind in CORRUPTIONS
    ]
    models = {"float": fingerprint.score, "int8": bundle.score}
    rows, id_scores = [], {}
    for name, dataset in sets:
        row = {"set": name}
        for model, score in models.items():
            scores = score(dataset.x)
            scores.save(os.path.join(out, f"scores_{model}_{name.replace(' ', '_')}.npz"))
            id_scores.setdefault(model, scores.ood_score)
            summary = summarize_scores(scores, dataset.y, fingerprint.label_values_)
            auroc = None if dataset is held_out else metrics.auroc(id_scores[model], scores.ood_score)
            row.update({"n": summary["n"], f"{model}_accuracy": summary["accuracy"]})
            row.update({f"{model}_ood_rate": summary["ood_rate"], f"{model}_auroc": auroc})
        rows.append(row)
    return {"run": run_dir, "bundle": bundle_dir, "seed": seed, "parity": manifest["parity"], "rows": rows}
