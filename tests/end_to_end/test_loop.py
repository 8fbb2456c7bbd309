"""The human in the loop, end to end on a simulated board, as README runs it: drift, the OOD rate rises,
record, review (a scripted person in the page), retrain with a new class, add with lineage, redeploy, the
OOD rate falls; and selection prefers the retrained bundle where both fit."""

import shutil

from benchmarks import loop

BROWSER = bool(shutil.which("chromium") and shutil.which("chromedriver"))


def test_drift_record_review_retrain_redeploy(tmp_path, digits_bundle):
    figures = loop.run(str(tmp_path), quick=True, browser=BROWSER, bundle=digits_bundle[1])["figures"]
    assert figures["ood_before_drift"] < 0.15 and figures["ood_after_drift"] > 0.4
    assert figures["first_watch"] == "no suitable model"  # nothing in the repository knows the new class
    assert figures["reviewed"]["five"] >= 10 and sum(figures["reviewed"].values()) == figures["queued"]
    assert figures["ood_after_redeploy"] < figures["ood_after_drift"] / 2
    lineage = {entry["name"]: entry["lineage"] for entry in figures["lineage"]}
    assert lineage["digits04"] is None and lineage["digits045"]["parent"] == "digits04"
    assert lineage["digits045"]["data_added"][0]["classes"]["five"] == figures["reviewed"]["five"]
    chosen = figures["select_known_digits"]
    assert chosen["selected"] == "digits045"  # both fit digits 0-4: the retrained one is preferred
    assert {c["name"]: c["superseded_by"] for c in chosen["candidates"] if c["fits"]} == {
        "digits045": None,
        "digits04": "digits045",
    }
    assert not BROWSER or figures["labels_per_minute"] > 0
