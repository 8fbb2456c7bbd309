"""Several devices from one laptop: flashing N boards one after another against all of them at once.

A peer model (MLPerf Tiny keyword spotting from tests/data/models, wrapped as a bundle: no training) is
flashed to N simulated boards (`edgefp sim --profile nrf52840`: TFLite Micro within the board's budgets,
each a process on a pty) one after another, then to N fresh boards at once, each in a thread of its own
(`fanout.on_each`, as `edgefp flash BUNDLE --port A --port B ...` does). Each round starts new boards,
so every flash uploads; reported: the wall time of each way, and the median of each round's ratio.
The simulated boards run on this machine, so flashing them at once is bounded by its cores; real
boards wait on their serial links instead, where at once comes close to N times faster.

    python -m benchmarks.many_devices           # 2, 4 and 8 boards, 3 rounds each
    python -m benchmarks.many_devices --quick   # 3 boards, 1 round
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import save
from edgefp.bundle import Bundle
from edgefp.firmware_host.link import client
from edgefp.firmware_host.link.fanout import on_each
from edgefp.wrap import wrap

MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "models")
NAME = "mlperf_tiny_kws_ref"
PROFILE = "nrf52840"


@contextlib.contextmanager
def boards(count: int):
    """``count`` simulated boards, each in a process group of its own; yields their URLs."""
    started = []
    try:
        for _ in range(count):
            args = [sys.executable, "-m", "edgefp", "sim", "--profile", PROFILE]
            started.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True, start_new_session=True))
        yield [process.stdout.readline().strip() for process in started]
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def flash(url: str, archive: bytes, progress=None) -> dict:
    with client.open_device(url) as device:
        report = client.flash(device, archive, progress)
    assert report["uploaded"], url
    return report


def timed_flash(count: int, archive: bytes, at_once: bool) -> float:
    """Seconds to flash ``archive`` to ``count`` new boards, one after another or at once."""
    with boards(count) as urls:
        start = time.perf_counter()
        if at_once:
            failed = [outcome.error for outcome in on_each(urls, lambda url, progress: flash(url, archive, progress))]
            assert not any(failed), failed
        else:
            for url in urls:
                flash(url, archive)
        return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 boards, 1 round")
    args = parser.parse_args(argv)
    counts, rounds = ((3,), 1) if args.quick else ((2, 4, 8), 3)
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, f"{NAME}.efp")
        wrap(os.path.join(MODEL, f"{NAME}.tflite"), path)
        archive = Bundle.load(path).archive_bytes()
    results = {"bundle": {"name": NAME, "bytes": len(archive)}, "board": PROFILE, "rounds": rounds, "boards": {}}
    for count in counts:
        one, many = [], []
        for _ in range(rounds):
            one.append(timed_flash(count, archive, at_once=False))
            many.append(timed_flash(count, archive, at_once=True))
        results["boards"][count] = {
            "one_after_another_s": statistics.median(one),
            "at_once_s": statistics.median(many),
            "ratio": statistics.median(a / b for a, b in zip(one, many)),
        }
    lines = [
        f"Flashing {NAME} ({len(archive):,} bytes) to simulated {PROFILE} boards on ptys, {os.cpu_count()} cores, "
        f"median of {rounds} round(s)",
        "",
        "| boards | one after another (s) | at once (s) | one after another / at once |",
        "|---|---|---|---|",
    ]
    for count, row in results["boards"].items():
        lines.append(f"| {count} | {row['one_after_another_s']:.2f} | {row['at_once_s']:.2f} | {row['ratio']:.2f} |")
    save("many_devices" + ("_quick" if args.quick else ""), results, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
