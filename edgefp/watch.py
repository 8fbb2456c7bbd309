"""The drift loop (docs/selection.md): follow a device's OOD rate; when it crosses a limit, pull the
device's recent OOD samples, run selection on them against the repository, and deploy the model that
matches, or raise a human-review alert. Every decision is appended to an events file as a JSON line.

:func:`watch` takes an open :class:`~edgefp.firmware_host.link.client.Device` (tests and scripts inject
one); :func:`watch_url` opens the device by URL and reconnects when the link drops
(:mod:`~edgefp.firmware_host.link.reconnect`).
"""

from __future__ import annotations

import datetime
import json
import time

import numpy as np

from edgefp import selection
from edgefp.data import to_raw
from edgefp.errors import EdgefpError
from edgefp.firmware_host.link import client
from edgefp.firmware_host.link.reconnect import reconnecting
from edgefp.repository import Repository

DEPLOYED, NO_MATCH, ALREADY_BEST = "deployed", selection.NO_MATCH, "already best"
MIN_SAMPLES = 8  # OOD samples pulled before selection is run on them


class _Window:
    """The OOD rate over the last ``n`` inputs since the window started, from polled counters."""

    def __init__(self, n: int | None):
        self.n = n
        self.start: int | None = None
        self.history: list[tuple[int, int]] = []  # (inputs, ood) at each poll since the window started
        self.last_inputs = -1

    def restart(self, counters: dict, *, keep_device_window: bool = False) -> None:
        self.start = counters["inputs"] - (counters["window_inputs"] if keep_device_window else 0)
        self.history = [(counters["inputs"], counters["ood"])]
        self.last_inputs = counters["inputs"]

    def rate(self, counters: dict) -> tuple[float, int] | None:
        """(OOD rate, inputs it covers) over the last n inputs, or None while the window is not full."""
        n = self.n or counters["window"]
        if self.start is None or counters["inputs"] < self.last_inputs:  # first poll, or the counters were reset
            self.restart(counters, keep_device_window=True)
        self.last_inputs = counters["inputs"]
        if counters["inputs"] - self.start < n:
            self.history.append((counters["inputs"], counters["ood"]))
            return None
        if n == counters["window"] and counters["window_inputs"] >= n:  # exact, from the device's own window
            rate = (float(counters["window_ood_rate"]), n)
        else:
            older = [item for item in self.history if item[0] <= counters["inputs"] - n]
            device_span = counters["window_inputs"]
            if older:
                inputs, ood = older[-1]
                span = counters["inputs"] - inputs
                rate = ((counters["ood"] - ood) / span, span)
            elif device_span >= n and counters["inputs"] - device_span >= self.start:
                # no poll old enough (inputs came in a burst): the device's window, all of it fresh
                rate = (float(counters["window_ood_rate"]), device_span)
            else:
                self.history.append((counters["inputs"], counters["ood"]))
                return None
        self.history.append((counters["inputs"], counters["ood"]))
        return rate


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def decide(device, repo: Repository, samples: list[dict], *, where: dict | None = None) -> dict:
    """Selection on pulled OOD samples (int8 inputs of the active bundle); flash the winner when it
    is not active yet. Returns the decision (without timestamp, device and rate)."""
    spec = client.manifest(device)
    x = to_raw(np.stack([sample["x"] for sample in samples]), spec.input)
    event = {"active": spec.name, "samples": len(samples), "candidates": [], "skipped": []}
    try:
        report = selection.select(repo, x, where=where)
    except EdgefpError as exc:
        return {**event, "decision": NO_MATCH, "reason": str(exc)}
    keys = ("name", "match_score", "ood_share", "ood_tolerance", "fits", "superseded_by")
    event["candidates"] = [{key: found[key] for key in keys} for found in report["candidates"]]
    event["skipped"] = report["skipped"]
    if report["selected"] is None:
        return {**event, "decision": NO_MATCH}
    flashed = selection.deploy(repo, report["selected"], device)
    if flashed["skipped"]:
        return {**event, "decision": ALREADY_BEST, "model": report["selected"]}
    return {**event, "decision": DEPLOYED, "model": report["selected"], "flashed": flashed["sha256"]}


def watch(
    device,
    repo: Repository,
    *,
    ood_rate: float = 0.3,
    window: int | None = None,
    interval: float = 1.0,
    events_path: str | None = None,
    where: dict | None = None,
    decisions: int | None = None,
    polls: int | None = None,
    min_samples: int = MIN_SAMPLES,
    on_decision=None,
    stop=None,
    sleep=time.sleep,
) -> list[dict]:
    """Poll ``device``'s counters every ``interval`` seconds; when the OOD rate over the last ``window``
    inputs (default: the device's own window) reaches ``ood_rate``, decide (:func:`decide`), append
    the decision to ``events_path`` and call ``on_decision(event)``, then wait for a fresh window.
    Stops after ``decisions`` decisions, ``polls`` polls, or when ``stop()`` is true; returns the decisions."""
    made: list[dict] = []
    tracker, count = _Window(window), 0
    while not (stop and stop()) and (decisions is None or len(made) < decisions) and (polls is None or count < polls):
        if count:
            sleep(interval)
        count += 1
        counters = client.counters(device)
        found = tracker.rate(counters)
        if found is None or found[0] < ood_rate:
            continue
        rate, span = found
        samples = [s for s in client.pull_ood(device) if s["input"] > counters["inputs"] - span]
        if len(samples) < min_samples:
            continue
        event = {"time": _now(), "device": device.url, "ood_rate": round(rate, 4), "window": span}
        event.update(decide(device, repo, samples, where=where))
        if events_path:
            with open(events_path, "a") as handle:
                handle.write(json.dumps(event) + "\n")
        made.append(event)
        if on_decision:
            on_decision(event)
        tracker.restart(client.counters(device))  # a fresh window (a new bundle has reset them anyway)
    return made


def watch_url(url: str, repo: Repository, *, key: bytes | None = None, **options) -> list[dict]:
    """:func:`watch` on the device at ``url``, reconnecting when the link drops (a wrong URL or key fails at once)."""
    made: list[dict] = []
    decisions, report = options.pop("decisions", None), options.pop("on_decision", None)

    def on_decision(event: dict) -> None:
        made.append(event)
        if report:
            report(event)

    def work(device) -> None:
        left = None if decisions is None else decisions - len(made)
        watch(device, repo, decisions=left, on_decision=on_decision, **options)

    reconnecting(url, work, key=key, done=lambda: decisions is not None and len(made) >= decisions)
    return made
