"""The host-device link: upload efficiency, inference round trips and the CLI's cold start.

A digits bundle (train on 0-4, edgefp's `train`, seed 0; converted with the same data as calibration)
is made in a temporary folder. Then, for each link, an agent with the `pi` board (LiteRT) serves in a
thread of this process, on a pty and on a TCP connection to 127.0.0.1:

1. upload: the archive's bytes against the bytes on the wire in both directions, as `flash()` counts
   them (handshake, upload, activation); target: efficiency (archive / wire) of at least 0.95;
2. round trips: INFER requests one after the other (warm-ups first, repeated), with the part the
   device spends in the interpreter (`InferResult.latency_us`), the part its request handler spends
   in all (inference, scoring, packing: `Agent.respond` called here without a link), and the rest,
   the link: framing, the transport and the host's side, host and agent sharing this process;
3. cold start: wall time of whole `edgefp` processes (`--help`, `devices`, `info --port URL` against
   an `edgefp sim` on a pty and on TCP) side by side with MicroPython's `mpremote devs` (the same job as
   `edgefp devices`: list the serial ports), the commands taking turns, one untimed run of each first,
   median of the timed runs, and the median of each round's ratio to `mpremote devs`; targets: under
   0.5 s, and `devices` and `info` on a pty no slower than `mpremote devs` (ratio <= 1); and which
   heavy packages get imported (`python -X importtime`).
   The same `info` is also timed inside this process (open, HELLO, close): what is left of the cold
   start is Python and imports. pyserial's `socket://` close sleeps 0.3 s, in the TCP numbers as measured.

    python -m benchmarks.link               # 3 x 500 round trips, 5 runs per command
    python -m benchmarks.link --quick       # 2 x 200 round trips, 3 runs per command
    python -m benchmarks.link --cold-start  # only the cold starts, 21 runs per command (no bundle made)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import save, trained
from edgefp import data
from edgefp.bundle import Bundle
from edgefp.converter.convert import convert
from edgefp.firmware_host.device.agent import Agent, Session, serving
from edgefp.firmware_host.link import client
from edgefp.firmware_host.link.framing import Frame
from edgefp.firmware_host.link.protocol import InferResult, Msg

EFFICIENCY_TARGET = 0.95
COLD_START_TARGET_S = 0.5
MPREMOTE = "mpremote devs"  # the reference device-only command (pip install mpremote: the dev extra)
BOARD = "pi"  # LiteRT
SAMPLES = 64  # distinct inputs cycled through
HEAVY = ("tensorflow", "keras", "ai_edge_litert", "tflite_micro")
SIM_START_S = 60.0


# ------------------------------------------------------------------------------------- bundle
def make_bundle(workdir: str) -> tuple[bytes, np.ndarray, dict]:
    """The digits bundle's archive bytes, int8 inputs from the 0-4 test set, and what making it took."""
    start = time.perf_counter()
    train_set = data.load("digits:train:0-4")
    fingerprint = trained(train_set, seed=0)
    run_dir, out = os.path.join(workdir, "run"), os.path.join(workdir, "digits04")
    fingerprint.save(run_dir)
    convert(run_dir, data.load("digits:train:0-4"), out)
    bundle = Bundle.load(out)
    archive = bundle.archive_bytes()
    samples = bundle.quantize(data.load("digits:test:0-4").x[:SAMPLES])
    made = {
        "bundle": bundle.manifest.name,
        "archive_bytes": len(archive),
        "model_bytes": len(bundle.model_bytes),
        "input_shape": list(samples.shape[1:]),
        "input_bytes": int(np.prod(samples.shape[1:])),
        "seconds": round(time.perf_counter() - start, 1),
    }
    return archive, samples, made


# ------------------------------------------------------------------------------------- serving


def upload(device: client.Device, archive: bytes) -> dict:
    sent, received, resent = device.bytes_sent, device.bytes_received, device.resent
    report = client.flash(device, archive)
    assert report["uploaded"], report
    return {
        "archive_bytes": report["bytes"],
        "wire_bytes": report["wire_bytes"],
        "host_to_device": device.bytes_sent - sent,
        "device_to_host": device.bytes_received - received,
        "efficiency": report["bytes"] / report["wire_bytes"],
        "resent": device.resent - resent,
        "seconds": report["seconds"],
    }


def round_trips(device: client.Device, samples: np.ndarray, warmup: int, timed: int, reps: int) -> dict:
    """``reps`` times: ``warmup`` INFERs, then ``timed`` INFERs each timed alone and as a whole."""
    rates, rtt_ns, device_us = [], [], []
    resent = device.resent
    for _ in range(reps):
        for i in range(warmup):
            client.infer(device, samples[i % len(samples)])
        start = time.perf_counter_ns()
        for i in range(timed):
            before = time.perf_counter_ns()
            result = client.infer(device, samples[i % len(samples)])
            rtt_ns.append(time.perf_counter_ns() - before)
            device_us.append(result.latency_us)
        rates.append(timed / ((time.perf_counter_ns() - start) / 1e9))
    rtt_us = np.array(rtt_ns) / 1000
    return {
        "rates_per_s": rates,
        "rate_per_s": statistics.median(rates),
        "rtt_us": percentiles(rtt_us),
        "device_us": percentiles(np.array(device_us, dtype=np.float64)),
        "resent": device.resent - resent,
    }


def handler_time(agent: Agent, samples: np.ndarray, warmup: int, timed: int, reps: int) -> dict:
    """The agent's whole answer to INFER without a link: ``respond`` on a decoded frame."""
    times, seq, session = [], 0, Session(None)
    for _ in range(reps):
        for i in range(warmup + timed):
            seq = seq % 0xFFFF + 1  # a new seq each time: never the kept answer
            frame = Frame(Msg.INFER, seq, samples[i % len(samples)].tobytes())
            before = time.perf_counter_ns()
            agent.respond(frame, session)
            if i >= warmup:
                times.append((time.perf_counter_ns() - before) / 1000)
    return percentiles(np.array(times))


def percentiles(values: np.ndarray) -> dict:
    return {
        "mean": float(np.mean(values)),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
    }


def measure_link(link: str, archive: bytes, samples: np.ndarray, workdir: str, timing: dict) -> dict:
    agent = Agent(os.path.join(workdir, f"agent-{link}"), BOARD)
    with serving(agent, link) as url:
        with client.open_device(url) as device:
            result = {"url": url, "upload": upload(device, archive)}
            check = InferResult.unpack(device.request(Msg.INFER, samples[0].tobytes()))
            assert check.probs.shape[0] > 0
            result["infer"] = round_trips(device, samples, timing["warmup"], timing["timed"], timing["reps"])
        # open + HELLO + close inside this process: `edgefp info` without starting Python
        opens = []
        for _ in range(timing["cold_reps"]):
            before = time.perf_counter()
            with client.open_device(url) as device:
                client.info(device)
            opens.append(time.perf_counter() - before)
        result["info_in_process_s"] = statistics.median(opens)
    result["handler_us"] = handler_time(agent, samples, timing["warmup"], timing["timed"], timing["reps"])
    infer = result["infer"]
    rtt, handler, device_us = 1e6 / infer["rate_per_s"], result["handler_us"]["mean"], infer["device_us"]["mean"]
    result["split_us"] = {  # the mean round trip: interpreter, rest of the handler, link
        "round_trip": rtt,
        "inference": device_us,
        "handler_rest": handler - device_us,
        "link": rtt - handler,
        "inference_share": device_us / rtt,
    }
    return result


# ------------------------------------------------------------------------------------- cold start
def edgefp_command() -> list[str]:
    """The installed ``edgefp`` script next to this Python, else ``python -m edgefp``."""
    script = os.path.join(os.path.dirname(sys.executable), "edgefp")
    if os.access(script, os.X_OK):
        return [script]
    found = shutil.which("edgefp")
    return [found] if found else [sys.executable, "-m", "edgefp"]


@contextlib.contextmanager
def sim(tcp: bool):
    """An ``edgefp sim --profile pi`` process (pty, or ``--tcp``) and the URL it prints first."""
    args = [*edgefp_command(), "sim", "--profile", BOARD] + (["--tcp"] if tcp else [])
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            url = process.stdout.readline().strip()
            if not url:
                process.wait(SIM_START_S)
                errors.seek(0)
                raise RuntimeError(f"edgefp sim printed no URL: {errors.read().decode(errors='replace')[-500:]}")
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()


def imported(args: list[str]) -> list[str]:
    """The heavy packages ``python -m edgefp ARGS`` imports (``-X importtime``)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgefp", *args], capture_output=True, text=True)
    names = set(re.findall(r"^import time:\s*\d+ \|\s*\d+ \|\s*([\w.]+)\s*$", done.stderr, flags=re.M))
    if not names:
        raise RuntimeError(f"no -X importtime output for edgefp {' '.join(args)}: {done.stderr[-300:]}")
    return sorted({name.split(".")[0] for name in names} & set(HEAVY))


def mpremote_command() -> list[str]:
    """``mpremote devs``: the script next to this Python, else on the PATH."""
    script = os.path.join(os.path.dirname(sys.executable), "mpremote")
    found = script if os.access(script, os.X_OK) else shutil.which("mpremote")
    if not found:
        raise RuntimeError("mpremote is missing: pip install mpremote (or edgefp[dev])")
    return [found, "devs"]


def interleaved(commands: dict[str, list[str]], reps: int) -> dict[str, list[float]]:
    """Wall times of each command, ``reps`` rounds in which every command runs once in turn (so that
    a busy machine slows them all alike), after one untimed run of each (page cache, .pyc). The bytecode
    goes to a folder of its own, so that the commands start as installed ones do even where
    PYTHONDONTWRITEBYTECODE is set (an editable install would otherwise compile edgefp on every run)."""
    with tempfile.TemporaryDirectory(prefix="edgefp-pycache-") as cache:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        for command in commands.values():
            first = subprocess.run(command, capture_output=True, text=True, env=env)
            if first.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed ({first.returncode}): {first.stderr.strip()[-300:]}")
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(reps):
            for name, command in commands.items():
                before = time.perf_counter()
                subprocess.run(command, capture_output=True, check=True, env=env)
                times[name].append(time.perf_counter() - before)
    return times


def cold_starts(reps: int) -> dict:
    edgefp = edgefp_command()
    commands = {
        "edgefp --help": [*edgefp, "--help"],
        "edgefp devices": [*edgefp, "devices"],
        MPREMOTE: mpremote_command(),
    }
    with sim(False) as pty, sim(True) as tcp:
        commands["edgefp info --port PTY"] = [*edgefp, "info", "--port", pty]
        commands["edgefp info --port socket://"] = [*edgefp, "info", "--port", tcp]
        times = interleaved(commands, reps)
        heavy = {name: imported(command[len(edgefp) :]) for name, command in commands.items() if name != MPREMOTE}
    results = {}
    for name, runs in times.items():
        median = statistics.median(runs)
        results[name] = {
            "command": commands[name],
            "times_s": runs,
            "median_s": median,
            "min_s": min(runs),
            "max_s": max(runs),
            # each round's time over mpremote's in the same round, the median of them: a busy spell
            # slows both sides of a ratio alike
            "ratio_to_mpremote_devs": statistics.median(t / r for t, r in zip(runs, times[MPREMOTE])),
            "imports": heavy.get(name, []),
            "tensorflow_imported": "tensorflow" in heavy.get(name, []),
            "meets_target": median < COLD_START_TARGET_S,
        }
    for name in ("edgefp devices", "edgefp info --port PTY"):  # at least as fast as mpremote devs
        results[name]["meets_target"] = results[name]["meets_target"] and results[name]["ratio_to_mpremote_devs"] <= 1
    results["edgefp info --port socket://"]["note"] = "includes pyserial's 0.3 s sleep on closing socket://"
    return results


# ------------------------------------------------------------------------------------- report
def table(made: dict | None, links: dict, cold: dict, timing: dict) -> str:
    if made is None:  # --cold-start
        return "\n".join(["# The host-device link: cold start only", "", *cold_table(links, cold, timing)])
    lines = [
        "# The host-device link",
        "",
        f"Digits bundle `{made['bundle']}`: archive {made['archive_bytes']} bytes (model {made['model_bytes']}), "
        f"int8 input {made['input_bytes']} bytes. Agent on board `{BOARD}` (LiteRT) in a thread of the benchmark "
        "process; the host in its main thread.",
        "",
        f"## Upload (target: efficiency >= {EFFICIENCY_TARGET})",
        "",
        "| link | archive B | wire B (host->device + device->host) | efficiency | resent | seconds | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for link, result in links.items():
        up = result["upload"]
        lines.append(
            f"| {link} | {up['archive_bytes']} | {up['wire_bytes']} ({up['host_to_device']} + {up['device_to_host']}) "
            f"| {up['efficiency']:.3f} | {up['resent']} | {up['seconds']:.3f} "
            f"| {'met' if up['efficiency'] >= EFFICIENCY_TARGET else 'MISSED'} |"
        )
    lines += [
        "",
        f"## INFER round trips ({timing['reps']} x {timing['timed']} after {timing['warmup']} warm-ups each)",
        "",
        "Mean round trip split into the interpreter's invoke (`latency_us` the device reports), the rest of "
        "the agent's handler (scoring, packing; timed without a link) and the link (framing, transport, host).",
        "",
        "| link | round trips/s median (min-max) | round trip us p50 / p90 | invoke us | rest of handler us "
        "| link us | invoke share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for link, result in links.items():
        infer, split = result["infer"], result["split_us"]
        lines.append(
            f"| {link} | {infer['rate_per_s']:.0f} ({min(infer['rates_per_s']):.0f}-{max(infer['rates_per_s']):.0f}) "
            f"| {infer['rtt_us']['p50']:.0f} / {infer['rtt_us']['p90']:.0f} | {split['inference']:.0f} "
            f"| {split['handler_rest']:.0f} | {split['link']:.0f} | {split['inference_share']:.0%} |"
        )
    return "\n".join(lines + cold_table(links, cold, timing))


def cold_table(links: dict, cold: dict, timing: dict) -> list[str]:
    lines = [
        "",
        f"## Cold start ({timing['cold_reps']} rounds after an untimed one, the commands taking turns; target: "
        f"median < {COLD_START_TARGET_S} s, and `devices` and `info` on a pty no slower than `{MPREMOTE}`)",
        "",
        f"| command | median s | min-max s | / {MPREMOTE} | in-process open+info+close ms | heavy imports | target |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, result in cold.items():
        link = {"PTY": "pty", "socket://": "tcp"}.get(name.rsplit(" ", 1)[-1])
        inside = f"{links[link]['info_in_process_s'] * 1000:.1f}" if link and link in links else "-"
        verdict = "met" if result["meets_target"] else "MISSED"
        if name == MPREMOTE:
            verdict = "reference"
        elif result.get("note"):
            verdict += f" ({result['note']})"
        imports = ", ".join(result["imports"]) or "none" if name != MPREMOTE else "-"
        lines.append(
            f"| {name} | {result['median_s']:.3f} | {result['min_s']:.3f}-{result['max_s']:.3f} "
            f"| {result['ratio_to_mpremote_devs']:.2f} | {inside} | {imports} | {verdict} |"
        )
    lines.append("")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer round trips and command runs")
    parser.add_argument("--cold-start", action="store_true", help="only the cold starts (no bundle, no link)")
    args = parser.parse_args(argv)
    if args.cold_start:
        timing = {"cold_reps": 21}
        cold = cold_starts(timing["cold_reps"])
        save("link_cold_start", {"timing": timing, "cold_start": cold}, table(None, {}, cold, timing))
        return 0
    if args.quick:
        timing = {"reps": 2, "warmup": 20, "timed": 200, "cold_reps": 3}
    else:
        timing = {"reps": 3, "warmup": 20, "timed": 500, "cold_reps": 5}
    with tempfile.TemporaryDirectory(prefix="edgefp-link-") as workdir:
        archive, samples, made = make_bundle(workdir)
        links = {link: measure_link(link, archive, samples, workdir, timing) for link in ("pty", "tcp")}
    cold = cold_starts(timing["cold_reps"])
    results = {"timing": timing, "bundle": made, "links": links, "cold_start": cold}
    save("link" + ("_quick" if args.quick else ""), results, table(made, links, cold, timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
