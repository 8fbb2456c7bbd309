"""Commands that talk to a device or act as one: devices, info, flash, infer, pull-ood, record, monitor,
agent, sim, export-firmware. Their modules import nothing heavy before they need it."""

from __future__ import annotations

import functools
import os
import signal
import sys

import click

from edgefp.cli.common import (
    ALL_OPTION,
    BROKER_CA_OPTION,
    BROKER_OPTION,
    FORCE_OPTION,
    JSON_OPTION,
    KEY_OPTION,
    PORT_OPTION,
    PORTS_OPTION,
    SOME_FAILED,
    FloatRange,
    ProgressBar,
    broker,
    device_ports,
    emit,
    lines_wanted,
    on_devices,
    open_device,
    output_lines,
    read_key,
    score_lines,
)
from edgefp.errors import EdgefpError


@click.command(epilog="Example: edgefp devices --probe")
@click.option("--probe", is_flag=True, help="Say which ports answer the edgefp handshake.")
@JSON_OPTION
def devices(probe, as_json):
    """Serial ports with their USB VID:PID, serial number and description."""
    from edgefp.firmware_host.link.ports import list_ports

    found = list_ports(probe=probe)
    lines = [
        f"{e['port']:<16} {e['vid_pid'] or '-':<10} {e['serial_number'] or '-':<18} {e['description']}" for e in found
    ]
    if probe:
        lines = [f"{line}  [{_probed(e['edgefp'])}]" for line, e in zip(lines, found)]
    emit({"ports": found}, as_json, lines or ["no serial ports found"])


def _probed(answer: dict | None) -> str:
    if answer is None:
        return "not edgefp"
    return f"edgefp {answer['board']}" + (", key required" if answer["key_required"] else "")


@click.command(epilog="Example: edgefp info --port /dev/ttyACM0 --json  (several: --port A --port B, or --all)")
@PORTS_OPTION
@ALL_OPTION
@KEY_OPTION
@JSON_OPTION
def info(ports, all_ports, key_file, as_json):
    """What a device is and holds: protocol, board, runtime, budgets, active bundle, slots. On several
    devices at once (--port repeated, or --all): a table, exit status 1 when any of them failed."""
    from edgefp.firmware_host.link.client import info as device_info

    urls = device_ports(ports, all_ports)
    if len(urls) > 1 or all_ports:

        def ask(device, _progress) -> dict:
            return device_info(device)

        return on_devices(urls, key_file, ask, task="asking", summary=_info_summary, as_json=as_json)
    (port,) = urls
    with open_device(port, key_file) as device:
        report = device_info(device)
    lines = [f"{port}:"] + [f"  {key}: {value}" for key, value in report.items() if key != "url"]
    if not report.get("active"):
        lines.append("  no bundle active: flash one with 'edgefp flash BUNDLE --port ...'")
    emit(report, as_json, lines)


def _info_summary(report: dict) -> str:
    active = report["active"]
    bundle = f"{active['name']} active" if active else "no bundle active"
    return f"{report['board']} ({report['runtime']}), {bundle}"


@click.command(
    epilog="Example: edgefp flash digits04.efp --port /dev/ttyACM0  (several at once: --port A --port B, or --all)"
)
@click.argument("bundle", type=click.Path())
@PORTS_OPTION
@ALL_OPTION
@KEY_OPTION
@JSON_OPTION
def flash(bundle, ports, all_ports, key_file, as_json):
    """Upload a bundle to a device in chunks, have the device verify it, and activate it (nothing is
    uploaded when the device already runs it). On several devices at once (--port repeated, or --all):
    a line of progress per device, then a table; a device that fails keeps its last good bundle and
    disturbs none of the others; exit status 1 when any failed."""
    from edgefp.bundle import Bundle
    from edgefp.firmware_host.link.client import flash as flash_device

    archive = Bundle.load(bundle).archive_bytes()
    urls = device_ports(ports, all_ports)
    if len(urls) > 1 or all_ports:

        def upload(device, progress) -> dict:
            return flash_device(device, archive, progress)

        return on_devices(urls, key_file, upload, task="flashing", summary=_flash_summary, as_json=as_json)
    (port,) = urls
    with open_device(port, key_file) as device, ProgressBar(enabled=not as_json) as progress:
        task = f"flashing {bundle}"
        progress(task, 0, len(archive))
        report = flash_device(device, archive, progress=progress.counter(task))
    lines = [
        f"{report['name']} ({report['bytes']} bytes) on {port}: {_flash_state(report)} in {report['seconds']:.2f} s"
    ]
    if report["uploaded"]:
        report["efficiency"] = report["bytes"] / report["wire_bytes"]
        lines.append(f"  {report['wire_bytes']} bytes on the wire (payload / wire = {report['efficiency']:.3f})")
    emit(report, as_json, lines)


def _flash_state(report: dict) -> str:
    return "already active, nothing uploaded" if report["skipped"] else "verified and active"


def _flash_summary(report: dict) -> str:
    return f"{report['name']} {_flash_state(report)}"


@click.command(epilog="Example: edgefp infer --port /dev/ttyACM0 --data digits:test --out device.npz")
@PORT_OPTION
@click.option("--data", required=True, help="Data to run on the device: FILE.npz[:train|test][:CLASSES] or digits.")
@click.option("--out", default=None, type=click.Path(), help="Score file to write (as 'edgefp score' writes it).")
@KEY_OPTION
@FORCE_OPTION
@JSON_OPTION
def infer(port, data, out, key_file, force, as_json):
    """Run every sample on the device: prediction and OOD check happen on the device itself."""
    from edgefp.bundle import Bundle
    from edgefp.firmware_host.link.client import infer_samples, manifest
    from edgefp.fsutil import check_file_output
    from edgefp.ood import is_score_file
    from edgefp.scoring import load_for

    if out:
        check_file_output(out, force=force, written_by_edgefp=is_score_file, kind="score file")
    with open_device(port, key_file) as device:
        spec = Bundle(manifest(device), {}, source=port)
        dataset = load_for(spec, data)
        with ProgressBar(enabled=not as_json) as progress:
            progress("inferring", 0, len(dataset))
            scores, latencies = infer_samples(device, dataset.x, progress=progress.counter("inferring"))
    if out:
        scores.save(out, force=force)
    if not spec.fingerprinted:
        report = scores.summary(dataset.y)
        report.update(data=data, port=port, out=out, device_latency_us=float(latencies.mean()))
        return emit(report, as_json, output_lines(report, f"{data} on {port}"))
    labels = [label.value for label in spec.manifest.labels]
    report = scores.summary(dataset.y, labels)
    report.update(data=data, port=port, out=out, device_latency_us=float(latencies.mean()))
    lines = score_lines(report, f"{data} on {port}", f"{latencies.mean():.0f} us per inference on the device")
    emit(report, as_json, lines)


@click.command("pull-ood", epilog="Example: edgefp pull-ood --port /dev/ttyACM0 --out review/")
@PORT_OPTION
@click.option("--out", required=True, type=click.Path(), help="Directory for ood.npz (samples and scores).")
@KEY_OPTION
@FORCE_OPTION
@JSON_OPTION
def pull_ood(port, out, key_file, force, as_json):
    """Fetch the device's recent out-of-distribution inputs with their scores, for a human to review."""
    from edgefp.firmware_host.link.record import pull_ood as pull

    with open_device(port, key_file) as device:
        report = pull(device, out, force=force)
    report["port"] = port
    lines = [f"{report['samples']} OOD samples from {port} -> {report['out']} (x: the model's preprocessed input)"]
    emit(report, as_json, lines)


@click.command(epilog="Example: edgefp record --port /dev/ttyACM0 --out field.npz --count 500 --ood-only")
@PORT_OPTION
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Data file to write or continue (.npz).")
@click.option("--count", type=click.IntRange(1), default=None, help="Stop when the file holds this many samples.")
@click.option("--duration", type=FloatRange(0, min_open=True), default=None, help="Stop after this many seconds.")
@click.option("--ood-only", is_flag=True, help="Only the inputs the device flagged out of distribution.")
@click.option("--force", is_flag=True, help="Start --out over when it holds an earlier recording (never another file).")
@KEY_OPTION
@JSON_OPTION
def record(port, out, count, duration, ood_only, force, key_file, as_json):
    """Record the device's inputs (raw samples, with its scores and timestamps) into a data file the
    trainer reads, starting with the oldest it still holds. Reads them by number from the device's log:
    a dropped link loses or repeats none, and running the command again continues the file."""
    from edgefp.firmware_host.link.record import record as record_device

    lines_out = lines_wanted(as_json)

    def on_sample(recording) -> None:
        if not lines_out and len(recording) % 10 == 0:
            flagged = int(sum(recording.columns["is_ood"]))
            click.echo(f"\rrecorded {len(recording)} samples ({flagged} flagged OOD)", nl=False)

    report = record_device(
        port,
        out,
        force=force,
        count=count,
        ood_only=ood_only,
        duration=duration,
        key=read_key(key_file),
        on_sample=on_sample,
    )
    if not lines_out:
        click.echo()
    lines = [
        f"{report['samples']} samples in {out} ({report['recorded']} new, {report['flagged']} flagged OOD in all), "
        f"{report['samples_per_s'] or 0:.1f} samples/s"
    ]
    if report["lost"]:
        lines.append(f"  {report['lost']} inputs left the device's log before they could be read")
    emit(report, as_json, lines)


@click.command(
    epilog="Example: edgefp monitor --port /dev/ttyACM0 --log events.jsonl  (merged: --port A --port B, or --all)"
)
@PORTS_OPTION
@ALL_OPTION
@click.option(
    "--log", "log_path", default=None, type=click.Path(dir_okay=False), help="Append events here as JSON lines."
)
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after this many events (from each device).")
@click.option("--duration", type=FloatRange(0, min_open=True), default=None, help="Stop after this many seconds.")
@KEY_OPTION
@JSON_OPTION
def monitor(ports, all_ports, log_path, count, duration, key_file, as_json):
    """Live console of the device's inferences (prediction, OOD score and verdict, latency), OOD alerts
    highlighted; JSON lines when piped or with --json; reconnects when the device resets or the link drops.
    Several devices (--port repeated, or --all) merge into one stream, each line naming its device (a
    "device" field in JSON); each reconnects on its own, one failing leaves the others running (exit
    status 1 at the end), and Ctrl-C ends them all."""
    import datetime
    import json
    import threading

    from edgefp.firmware_host.link.fanout import on_each
    from edgefp.firmware_host.link.monitor import follow

    urls = device_ports(ports, all_ports)
    several, width = len(urls) > 1 or all_ports, max(len(url) for url in urls)
    lines_out, key, printing = lines_wanted(as_json), read_key(key_file), threading.Lock()
    log = open(log_path, "a") if log_path else None  # noqa: SIM115 - closed below

    def printer(url: str):
        def on_event(event: dict) -> None:
            if several:
                event = {"device": url, **event}
            line = json.dumps(event)
            with printing:
                if log:
                    log.write(line + "\n")
                    log.flush()
                if lines_out:
                    click.echo(line)
                    return
                stamp = datetime.datetime.fromtimestamp(event["received"]).strftime("%H:%M:%S.%f")[:-3]
                text = (
                    f"{stamp}  #{event['input']:<6} pred {event['pred']:<3} score {event['score']:7.3f}  "
                    f"{event['latency_us']:>6} us  {'OOD' if event['ood'] else 'ok'}"
                )
                text = f"{url:<{width}}  {text}" if several else text
                click.echo(click.style(text, fg="red", bold=True) if event["ood"] else text)

        return on_event

    def failed(outcome) -> None:
        if not outcome.ok:
            with printing:
                click.echo(f"edgefp: {outcome.port}: FAILED: {outcome.error}", err=True)

    try:
        if not several:
            follow(urls[0], printer(urls[0]), key=key, count=count, duration=duration)
            return 0
        stop = threading.Event()

        def watch(url: str, _progress) -> int:
            return follow(url, printer(url), key=key, stop=stop.is_set, count=count, duration=duration)

        outcomes = on_each(urls, watch, on_done=failed, stop=stop)
        return 0 if all(outcome.ok for outcome in outcomes) else SOME_FAILED
    finally:
        if log:
            log.close()


TRUST_OPTION = click.option(
    "--trust",
    "trust_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Accept only bundles signed with the key of this signing.pub, never an older one (docs/security.md).",
)


def read_trust(path: str | None) -> bytes | None:
    from edgefp.signing import load_public_key

    return load_public_key(path) if path else None


@click.command(
    epilog="Example: edgefp agent --data-dir /var/lib/edgefp --serial /dev/ttyGS0 "
    "--samples /run/edgefp/samples.sock\n\n"
    "Example: edgefp agent --data-dir /var/lib/edgefp --broker mqtt://192.168.1.2:1883 --device-id pi-7 --tag site=lab"
)
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Where the two bundle slots live.")
@click.option("--board", default="pi", show_default=True, help="Board profile (runtime and budgets).")
@click.option("--serial", "serial_path", default=None, help="Serve on this serial port (e.g. USB gadget /dev/ttyGS0).")
@click.option("--tcp", default=None, help="Serve on HOST:PORT instead; beyond 127.0.0.1 only with --key-file.")
@BROKER_OPTION
@BROKER_CA_OPTION
@click.option("--device-id", default=None, help="With --broker: this device's id in the fleet [default: host name].")
@click.option("--tag", "tags", multiple=True, help="With --broker: a tag of this device, KEY=VALUE; repeatable.")
@click.option(
    "--samples",
    "samples_address",
    default=None,
    help="Take windows from the program that owns the sensor: a socket path or 127.0.0.1:PORT (docs/sensors.md).",
)
@KEY_OPTION
@TRUST_OPTION
def agent(
    data_dir, board, serial_path, tcp, broker_url, broker_ca, device_id, tags, samples_address, key_file, trust_path
):
    """The on-device agent of a Raspberry Pi or Coral board: serves the device protocol, runs the
    active bundle and its OOD check locally, keeps the last good bundle across restarts. With --samples
    the program that owns the sensor hands it windows of raw values on a local socket. With --broker it
    joins an MQTT fleet (docs/fleet.md): retained status, OOD events, and controllers reach it through
    the broker; --serial or --tcp may serve as well."""
    from edgefp.firmware_host.device.agent import Agent
    from edgefp.firmware_host.device.serve import serve

    if broker_url is None and (serial_path is None) == (tcp is None):
        raise EdgefpError("give exactly one of --serial PATH and --tcp HOST:PORT, or --broker URL")
    if serial_path is not None and tcp is not None:
        raise EdgefpError("give one of --serial PATH and --tcp HOST:PORT, not both")
    if broker_url is None and (device_id or tags):
        raise EdgefpError("--device-id and --tag name the device in a fleet: give --broker too")
    device = Agent(data_dir, board, key=read_key(key_file), trust=read_trust(trust_path))
    options = {"serial_path": serial_path, "tcp": tcp, "samples_address": samples_address}
    if broker_url is not None:
        from edgefp.cli.fleet import default_id
        from edgefp.firmware_host.device.fleet import AgentMember, on_broker
        from edgefp.repository import parse_pairs

        where_to = broker(broker_url, broker_ca)
        member = AgentMember(device, where_to, device_id or default_id(), parse_pairs(tags, "tag"))
        click.echo(f"{member.device_id} on {where_to.url}", err=True)
        options["member"] = member
        serve = on_broker
    _until_signalled(serve, device, on_address=functools.partial(_announce, url_on_stdout=False), **options)


@click.command(
    epilog="Example: edgefp sim --profile nrf52840 --feed digits:test:0-4 --rate 20 --drift-at 100 --drift invert"
)
@click.option("--profile", default="nrf52840", show_default=True, help="Board profile to act as.")
@click.option("--tcp", is_flag=True, help="Listen on socket://127.0.0.1:PORT instead of a pty.")
@click.option(
    "--data-dir", default=None, type=click.Path(file_okay=False), help="Keep slots here [default: temporary]."
)
@click.option("--feed", default=None, help="Act as a live sensor replaying this data (once a bundle is active).")
@click.option("--rate", type=FloatRange(0, min_open=True), default=10.0, show_default=True, help="Feed rate, Hz.")
@click.option("--drift-at", type=click.IntRange(0), default=None, help="The fed samples drift from this one on.")
@click.option("--drift", default=None, help="The drift: noise, invert, stuck, gain, gaussian, blur or reverse.")
@click.option("--drift-to", default=None, help="The drift: this data from --drift-at on (e.g. a new class).")
@click.option(
    "--samples",
    "samples_address",
    default=None,
    help="Also take windows from programs on this machine: a socket path or 127.0.0.1:PORT (docs/sensors.md).",
)
@TRUST_OPTION
def sim(profile, tcp, data_dir, feed, rate, drift_at, drift, drift_to, samples_address, trust_path):
    """A simulated board: the agent with a board profile's runtime and budgets (microcontroller
    profiles run TFLite Micro and refuse bundles that do not fit). Prints the URL on its first line.
    With --feed it is also a live sensor, replaying data (drifting from --drift-at on, and staying
    drifted) for monitoring and recording.

    --profile qemu-m4 runs the C firmware itself on an emulated Cortex-M4 (QEMU mps2-an386, built with
    arm-none-eabi-gcc on first use; instruction-counted, so bench reports instructions), its sensor fed
    over the chip's second UART; --profile native runs the same firmware built for this machine."""
    from edgefp.data import load
    from edgefp.firmware_host.device.feed import feed_samples
    from edgefp.firmware_host.device.serve import simulate

    if drift_at is None and (drift or drift_to):
        raise EdgefpError("--drift and --drift-to need --drift-at, the sample the drift starts at")
    if drift_at is not None and (drift is None) == (drift_to is None):
        raise EdgefpError("--drift-at needs one of --drift KIND and --drift-to DATA")
    if drift_at is not None and not feed:
        raise EdgefpError("--drift-at drifts the fed samples: give --feed DATA too")
    sensor = feed_samples(load(feed).x, drift_at, drift, load(drift_to).x if drift_to else None) if feed else None
    options = {"tcp": tcp, "data_dir": data_dir, "sensor": sensor, "rate": rate, "samples_address": samples_address}
    options["trust"] = read_trust(trust_path)
    _until_signalled(simulate, profile, on_address=functools.partial(_announce, url_on_stdout=True), **options)


def _until_signalled(run, *args, **kwargs) -> None:
    """``run(*args, **kwargs)``, a device served until the process is told to end: on SIGTERM or SIGHUP
    unwind (the emulator, temporary slots and the sample socket's file go), then end as the signal would."""

    def unwind(signum, _frame):
        raise _Stopped(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, unwind)
    try:
        run(*args, **kwargs)
    except _Stopped as stopped:
        signal.signal(stopped.signum, signal.SIG_DFL)
        os.kill(os.getpid(), stopped.signum)


class _Stopped(BaseException):
    """SIGTERM or SIGHUP arrived: unwind what the served device holds, then end by the signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _announce(what: str, address: str, *, url_on_stdout: bool) -> None:
    """Print an address a served device opened: its samples socket on stderr, its URL on stdout (or stderr)."""
    if what == "samples":
        click.echo(f"samples: {address}", err=True)
    else:
        click.echo(address, err=not url_on_stdout)
    sys.stdout.flush()


@click.command(
    "export-firmware",
    epilog="Example: edgefp export-firmware --board qemu-m4 --out fw/ --build  (then: make -C fw)",
)
@click.option("--board", required=True, help="Board profile: its budgets, and its port (qemu-m4, native) or template.")
@click.option("--out", required=True, type=click.Path(), help="Directory to write the project to.")
@click.option("--build", "build_it", is_flag=True, help="Also build it (tested ports) and report flash and RAM use.")
@click.option("--bundle", "bundles", multiple=True, type=click.Path(), help="Say if this bundle fits (repeatable).")
@click.option(
    "--only-bundle-ops",
    is_flag=True,
    help="Compile only the operators the --bundle models use; other models are refused at upload.",
)
@click.option("--no-op-names", is_flag=True, help="Refusals give operator and type codes, not names (2.9 KB less).")
@click.option("--no-sensor", is_flag=True, help="The board has no sensor: no sensor loop, no window in RAM.")
@TRUST_OPTION
@FORCE_OPTION
@JSON_OPTION
def export_firmware(board, out, build_it, bundles, only_bundle_ops, no_op_names, no_sensor, trust_path, force, as_json):
    """Write the C firmware (device protocol, two bundle slots, int8 engine, OOD check) as a project
    for a board: portable sources, the board's port (or a template to fill in, docs/porting.md) and
    its budgets. Bundles are flashed later over the protocol, without rebuilding; a firmware for given
    bundles alone is smaller (--only-bundle-ops --no-op-names, and --no-sensor on a board without one)."""
    from dataclasses import replace

    from edgefp.bundle import Bundle
    from edgefp.firmware_host.firmware import build

    if only_bundle_ops and not bundles:
        raise EdgefpError("--only-bundle-ops needs the bundles the firmware will run: give them with --bundle")
    loaded = [Bundle.load(path) for path in bundles]
    options = build.Options(op_names=not no_op_names, sensor_loop=not no_sensor, trust=read_trust(trust_path))
    rams = [build.bundle_ram(bundle, board, options) for bundle in loaded]  # refuses models the engine cannot run
    operators = build.operators_of(loaded) if only_bundle_ops else None
    options = replace(options, operators=operators)
    report = build.export(board, out, force=force, options=options)
    report["operators"] = list(operators) if operators else "all"
    lines = [f"firmware for {report['board']} written to {out} (port {report['port']})", f"  build: {report['make']}"]
    if not report["tested"]:
        lines.append(f"  write the board layer in {out}/boards/template/board.c first (docs/porting.md)")
    if build_it:
        report["sizes"] = build.budget_report(board, options)
        lines += build.budget_lines(report["sizes"])
    if operators:
        lines.append(f"  operators: {', '.join(operators)} only")
    if options.trust is not None:
        from edgefp.signing import key_id

        report["trust_key_id"] = key_id(options.trust).hex()
        lines.append(f"  takes only bundles signed with key {report['trust_key_id']}, never older ones")
    report["bundles"] = rams
    for ram in report["bundles"]:
        verdict = "fits" if ram["fits"] else f"does NOT fit: {ram['ram_bytes'] - ram['board_ram_bytes']:,} bytes short"
        lines.append(
            f"  {ram['bundle']}: needs {ram['ram_bytes']:,} bytes of the {ram['board_ram_bytes']:,}-byte arena "
            f"(engine {ram['engine_arena_bytes']:,}, score tables and OOD buffer {ram['tables_and_ood_bytes']:,}, "
            f"input standardisation and sensor window {ram['sensor_bytes']:,}): "
            f"{verdict}"
        )
    emit(report, as_json, lines)


COMMANDS = [devices, info, flash, infer, pull_ood, record, monitor, agent, sim, export_firmware]
