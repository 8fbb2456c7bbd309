"""The human in the loop, end to end on a simulated board: README's command sequence ("The human in the
loop"), run as whole `edgefp` commands, with the figures it produces.

A board (`edgefp sim --profile pi`) runs a digits 0-4 bundle on a live sensor that replays
digits:test:0-4 at 50 Hz and, from input 150 on, digits:train:5: a class the model has never seen.

1. `monitor`: the OOD rate before the drift (inputs up to 150) and after it (from input 156 on);
2. `watch --once`: selection on the device's OOD samples finds no model that fits: a human is called;
3. `record --ood-only`: the flagged inputs into field.npz (samples per second, as record reports it);
4. `review`: a scripted person labels every queued sample in the page, served by `edgefp review`:
   known digits by their key, the fives as a new class "five" ('n', the name, Enter) and then its key.
   With a browser (Debian's chromium, headless, driven by selenium) the labelling rate is the page's
   own: each key is sent as soon as the next sample shows, and the time runs from the first key to the
   status "all labels saved" (every label on disk). It bounds what a person can do, it does not measure one;
5. `train` on digits:train:0-4 plus the exported field.reviewed.npz, `convert`, `repo add --parent`;
6. `flash`: the retrained bundle goes to the board;
7. `monitor`: the OOD rate after the redeployment, on the same sensor;
8. held out: `score` of both bundles on digits:test:5 (fives neither saw) and digits:test:0-4;
   `select` on digits:test:0-4, where both fit: the retrained bundle is preferred.

Record throughput on its own: `record` of every input the agent logged (500, its sensor at 200 Hz)
over a pty, and of the 64 inputs the C firmware's log holds under QEMU (when installed; its sensor at
20 Hz meanwhile, on the other UART).

    python -m benchmarks.loop            # the whole sequence, labelling in the browser when there is one
    python -m benchmarks.loop --quick    # fewer events and samples
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

from benchmarks.common import save
from edgefp import data

FEED, NEW_CLASS, NEW_NAME = "digits:test:0-4", "digits:train:5", "five"
RATE, DRIFT_AT = 50, 150


def edgefp(*args: str, timeout: float = 600) -> str:
    """Run one edgefp command; its stdout, or an error with its stderr."""
    result = subprocess.run([sys.executable, "-m", "edgefp", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"edgefp {' '.join(args)} failed: {result.stderr.strip()[-800:]}")
    return result.stdout


def background(*args: str) -> tuple[subprocess.Popen, str]:
    """An edgefp command left running, and the first line it printed (a URL)."""
    process = subprocess.Popen([sys.executable, "-m", "edgefp", *args], stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(10)


def ood_share(events: list[dict], low: int, high: int) -> float:
    chosen = [event["ood"] for event in events if low <= event["input"] <= high]
    return float(np.mean(chosen)) if chosen else float("nan")


def monitor(url: str, count: int) -> list[dict]:
    return [json.loads(line) for line in edgefp("monitor", "--port", url, "--count", str(count)).splitlines()]


def truth_of(x: np.ndarray) -> list[str]:
    """Each recorded sample's true class, found by its raw values in the sensor's data."""
    known = data.load(FEED)
    table = {sample.tobytes(): str(int(label)) for sample, label in zip(known.x, known.y)}
    table.update({sample.tobytes(): NEW_NAME for sample in data.load(NEW_CLASS).x})
    return [table[sample.tobytes()] for sample in x.astype(np.float32)]


def label_by_api(url: str, queue: list[dict], truth: dict[str, str], known: dict[str, int]) -> None:
    """The scripted person without a browser: the page's own requests."""
    for item in queue:
        name = truth[item["id"]]
        label = {"kind": "class", "value": known[name]} if name in known else {"kind": "class", "name": name}
        request = urllib.request.Request(
            url + "api/label",
            json.dumps({"id": item["id"], "label": label}).encode(),
            {"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request).read()
    urllib.request.urlopen(urllib.request.Request(url + "api/export", b"{}", {"Content-Type": "application/json"}))


def label_in_browser(url: str, queue: list[dict], truth: dict[str, str], profile: str) -> float:
    """The scripted person in headless chromium, with the keyboard; returns labels per minute."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(flag)
    for flag in ("--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    # the page shows the next sample once it has loaded it: wait for one not labelled yet, or the key
    # would label the previous one again
    script = "const id = document.getElementById('sample').dataset.id; return id && !state.labels[id] ? id : null"
    labelled = "return !!state.labels[arguments[0]]"
    key_of = (
        "for (const b of document.querySelectorAll('#choices button[data-key]'))"
        "  if (b.lastChild.textContent.replace(' (new)', '') === arguments[0]) return b.dataset.key;"
        "return null;"
    )
    try:
        driver.get(url)
        _until(lambda: driver.execute_script(script))
        start = time.monotonic()
        for _ in queue:
            shown = _until(lambda: driver.execute_script(script))
            key = driver.execute_script(key_of, truth[shown])
            keys = key if key else "n" + truth[shown] + Keys.ENTER
            ActionChains(driver).send_keys(keys).perform()
            _until(lambda shown=shown: driver.execute_script(labelled, shown))
        _until(lambda: driver.execute_script("return document.getElementById('status').textContent")
               .startswith("all labels saved"))  # fmt: skip
        seconds = time.monotonic() - start
        ActionChains(driver).send_keys("e").perform()
        _until(lambda: driver.execute_script("return document.getElementById('status').textContent")
               .startswith("wrote"))  # fmt: skip
    finally:
        driver.quit()
    return 60.0 * len(queue) / seconds


def _until(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise RuntimeError("the review page did not get there in time")


def run(work: str, *, quick: bool, browser: bool, bundle: str | None = None) -> dict:
    """README's sequence in ``work``; the figures (see the module's docstring)."""
    figures, seconds = {}, {}
    path = lambda name: os.path.join(work, name)  # noqa: E731
    models = path("models")
    if bundle is None:
        started = time.monotonic()
        edgefp("train", "--data", "digits:train:0-4", "--out", path("run04"))
        edgefp("convert", path("run04"), "--calib", "digits:train:0-4", "--out", path("digits04.efp"))
        seconds["train_and_convert_first"] = time.monotonic() - started
        bundle = path("digits04.efp")
    parent = json.loads(edgefp("repo", "add", bundle, "--repo", models, "--tag", "task=digits", "--json"))["name"]
    sim, url = background(
        "sim",
        "--profile",
        "pi",
        "--feed",
        FEED,
        "--rate",
        str(RATE),
        "--drift-at",
        str(DRIFT_AT),
        "--drift-to",
        NEW_CLASS,
    )
    try:
        edgefp("flash", bundle, "--port", url)
        events = monitor(url, DRIFT_AT + (60 if quick else 150))
        figures["ood_before_drift"] = ood_share(events, 1, DRIFT_AT)
        figures["ood_after_drift"] = ood_share(events, DRIFT_AT + 6, 1 << 30)
        watch = ("watch", "--port", url, "--repo", models, "--window", "50", "--once", "--events", path("watch.jsonl"))
        alert = json.loads(edgefp(*watch).splitlines()[-1])
        figures["first_watch"] = alert["decision"]
        count = 40 if quick else 80
        recorded = json.loads(
            edgefp("record", "--port", url, "--out", path("field.npz"), "--ood-only", "--count", str(count), "--json")
        )
        figures["record_ood_only_samples_per_s"] = recorded["samples_per_s"]
        with np.load(path("field.npz")) as field:
            truth = dict(zip([f"{s}:{i}" for s, i in zip(field["session"], field["input"])], truth_of(field["x"])))
        review, page = background("review", path("field.npz"), "--bundle", bundle, "--reference", "digits:train:0-4")
        try:
            state = json.load(urllib.request.urlopen(page + "api/queue"))
            figures["queued"] = len(state["queue"])
            if browser:
                figures["labels_per_minute"] = label_in_browser(page, state["queue"], truth, path("chromium"))
            else:
                known = {c["name"]: c["value"] for c in state["classes"]}
                label_by_api(page, state["queue"], truth, known)
        finally:
            stop(review)
        reviewed = data.load(path("field.reviewed.npz"))
        figures["reviewed"] = {
            reviewed.label_names[int(v)]: int(np.sum(reviewed.y == v)) for v in np.unique(reviewed.y)
        }
        started = time.monotonic()
        edgefp("train", "--data", "digits:train:0-4", "--data", path("field.reviewed.npz"), "--out", path("run045"))
        calib = ("--calib", "digits:train:0-4", "--calib", path("field.reviewed.npz"))
        edgefp("convert", path("run045"), *calib, "--out", path("digits045.efp"), "--name", "digits045")
        seconds["retrain_and_convert"] = time.monotonic() - started
        added = ("--parent", parent, "--data-added", path("field.reviewed.npz"))
        edgefp("repo", "add", path("digits045.efp"), "--repo", models, *added, "--tag", "task=digits")
        edgefp("flash", path("digits045.efp"), "--port", url)
        after = monitor(url, 60 if quick else 200)
        figures["ood_after_redeploy"] = ood_share(after, 1, 1 << 30)
    finally:
        stop(sim)
    figures["lineage"] = json.loads(edgefp("repo", "list", "--repo", models, "--json"))["bundles"]
    chosen = json.loads(edgefp("select", "--repo", models, "--data", FEED, "--json"))
    figures["select_known_digits"] = {"selected": chosen["selected"], "candidates": chosen["candidates"]}
    if not quick:
        figures["held_out"] = {
            name: {
                spec: json.loads(edgefp("score", model, "--data", spec, "--json")) for spec in ("digits:test:5", FEED)
            }
            for name, model in (("before", bundle), ("after", path("digits045.efp")))
        }
        figures.update(record_throughput(work, bundle))
    return {"figures": figures, "seconds": seconds}


def record_throughput(work: str, bundle: str) -> dict:
    """`record` of inputs already logged: 500 on the agent over a pty, 64 on the C firmware under QEMU."""
    from edgefp.firmware_host.firmware.launch import can_emulate

    found = {}
    boards = [("pi", 500, 200)] + ([("qemu-m4", 64, 20)] if can_emulate() else [])
    for board, count, rate in boards:  # the sensor goes on meanwhile, at a rate the chip's UARTs carry
        sim, url = background("sim", "--profile", board, "--feed", FEED, "--rate", str(rate))
        try:
            edgefp("flash", bundle, "--port", url)
            time.sleep(count / rate + 1.0)
            out = os.path.join(work, f"all-{board}.npz")
            report = json.loads(edgefp("record", "--port", url, "--out", out, "--count", str(count), "--json"))
            found[f"record_all_{board}_samples_per_s"] = report["samples_per_s"]
        finally:
            stop(sim)
    return found


def markdown(results: dict) -> str:
    f = results["figures"]
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    lines = [
        "| step | figure |",
        "|---|---|",
        f"| OOD rate before the drift (live, inputs 1-{DRIFT_AT}) | {pct(f['ood_before_drift'])} |",
        f"| OOD rate after the drift (a new class on the sensor) | {pct(f['ood_after_drift'])} |",
        f"| first `watch` | {f['first_watch']} |",
        f"| `record --ood-only` | {f['record_ood_only_samples_per_s']:.0f} samples/s |",
        f"| labelled in the page ({f['queued']} samples) | {', '.join(f'{k} {v}' for k, v in f['reviewed'].items())} |",
    ]
    if "labels_per_minute" in f:
        lines.append(
            f"| labels per minute in the page (scripted browser, the page's ceiling) | {f['labels_per_minute']:.0f} |"
        )
    lines += [
        f"| OOD rate after the redeployment (live) | {pct(f['ood_after_redeploy'])} |",
        f"| `select` on digits 0-4 (both fit) | {f['select_known_digits']['selected']} |",
    ]
    for key in sorted(k for k in f if k.startswith("record_all_")):
        lines.append(f"| `record` of every logged input, {key.split('_')[2]} | {f[key]:.0f} samples/s |")
    if "held_out" in f:
        h = f["held_out"]
        for when in ("before", "after"):
            fives, known = h[when]["digits:test:5"], h[when][FEED]
            accuracy = "-" if fives["accuracy"] is None else pct(fives["accuracy"])
            lines.append(
                f"| held out, model {when}: digits:test:5 flagged / accurate | {pct(fives['ood_rate'])} / {accuracy} |"
            )
            lines.append(
                f"| held out, model {when}: digits:test:0-4 flagged / accurate | {pct(known['ood_rate'])} / "
                f"{pct(known['accuracy'])} |"
            )
    for key, value in results["seconds"].items():
        lines.append(f"| {key.replace('_', ' ')} | {value:.0f} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    browser = bool(shutil.which("chromium") and shutil.which("chromedriver"))
    with tempfile.TemporaryDirectory(prefix="edgefp-loop-") as work:
        results = run(work, quick=args.quick, browser=browser)
    results["browser"] = browser
    save("loop_quick" if args.quick else "loop", results, markdown(results))


if __name__ == "__main__":
    main()
