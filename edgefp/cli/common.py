"""What every command group shares: options, the one way to print a report, progress and log lines."""

from __future__ import annotations

import logging
import math
import shutil
import sys
import threading
import time

import click
from click.core import ParameterSource

from edgefp.errors import EdgefpError


class FloatRange(click.FloatRange):
    """click's FloatRange, which lets NaN through (every comparison with it is false), without it."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail("nan is not a number", param, ctx)
        return number


JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON report.")
MAX_SEED = 2**32 - 1  # what numpy's and Keras' seeding accept
SEED_OPTION = click.option(
    "--seed",
    type=click.IntRange(0, MAX_SEED),
    default=0,
    show_default=True,
    help="Random seed (0 to 4294967295); the same seed gives the same result.",
)
FORCE_OPTION = click.option(
    "--force", is_flag=True, help="Replace --out if it exists and edgefp wrote it (never anything else)."
)
LAYERS_OPTION = click.option(
    "--layers",
    default=None,
    help="Comma-separated layers watched by autoencoders, 'logits' for the logits, the input layer's name for "
    "the input [default: every layer with a kernel below the penultimate one, and a vector input narrower "
    "than the first of them]. Example: --layers input,dense64",
)
FPR_OPTION = click.option(
    "--fpr",
    type=FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="Target false-positive rate of the OOD threshold.",
)
RUNTIME_OPTION = click.option(
    "--runtime",
    type=click.Choice(["litert", "tflm", "edgetpu", "firmware"]),
    default="litert",
    show_default=True,
    help="Interpreter for a bundle: LiteRT, TFLite Micro, LiteRT with the Edge TPU delegate, or the edgefp "
    "firmware's engine built for this machine.",
)
PORT_OPTION = click.option(
    "--port",
    required=True,
    envvar="EDGEFP_PORT",
    help="Device URL: a serial port (/dev/ttyACM0, COM3), socket://HOST:PORT, or a pty path [env EDGEFP_PORT].",
)
PORTS_OPTION = click.option(
    "--port",
    "ports",
    multiple=True,
    envvar="EDGEFP_PORT",
    help="Device URL: a serial port (/dev/ttyACM0, COM3), socket://HOST:PORT, or a pty path; repeat it for several "
    "devices at once [env EDGEFP_PORT, URLs separated by spaces].",
)
ALL_OPTION = click.option(
    "--all", "all_ports", is_flag=True, help="Every serial port that answers the edgefp handshake (devices --probe)."
)
KEY_OPTION = click.option(
    "--key-file",
    type=click.Path(dir_okay=False),
    envvar="EDGEFP_KEY_FILE",
    help="Shared key of an agent that listens beyond this machine [env EDGEFP_KEY_FILE].",
)
REPO_OPTION = click.option(
    "--repo",
    default=None,
    envvar="EDGEFP_REPO",
    type=click.Path(file_okay=False),
    help="Model repository directory [env EDGEFP_REPO; default: $XDG_DATA_HOME/edgefp/repo].",
)
WHERE_OPTION = click.option(
    "--where", multiple=True, help="Only bundles with this tag (or name=NAME), KEY=VALUE; repeatable."
)
BROKER_OPTION = click.option(
    "--broker",
    "broker_url",
    envvar="EDGEFP_BROKER",
    help="MQTT broker: mqtt://[USER@]HOST:PORT, or mqtts://... for TLS [env EDGEFP_BROKER; password in "
    "EDGEFP_BROKER_PASSWORD].",
)
BROKER_CA_OPTION = click.option(
    "--broker-ca",
    type=click.Path(dir_okay=False),
    envvar="EDGEFP_BROKER_CA",
    help="CA certificate to trust for an mqtts:// broker [default: the system's].",
)
# The library's parameters whose option is spelled otherwise than --NAME-IN-KEBAB-CASE.
OPTIONS = {"key": "--key-file", "labels_path": "--labels", "samples_address": "--samples", "serial_path": "--serial"}


def option_name(parameter: str) -> str:
    """The option of this CLI that sets a library parameter."""
    return OPTIONS.get(parameter, "--" + parameter.replace("_", "-"))


def emit(report: dict, as_json: bool, lines: list[str]) -> None:
    """Print a command's report: JSON with ``--json``, else its lines."""
    if as_json:
        import json

        click.echo(json.dumps(report, indent=1))
    else:
        for line in lines:
            click.echo(line)


def warn(text: str) -> None:
    click.echo(f"edgefp: warning: {text}", err=True)


def layer_names(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",") if name.strip()] if value else None


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:5.1f}%"


def read_key(path: str | None) -> bytes | None:
    from edgefp.firmware_host.link.keys import read_key as read

    return read(path)


def open_device(port: str, key_file: str | None):
    from edgefp.firmware_host.link.client import open_device as open_url

    return open_url(port, key=read_key(key_file))


def broker(url: str | None, ca_file: str | None):
    """The broker of --broker and --broker-ca, or an error when --broker is missing."""
    from edgefp.firmware_host.link.mqtt import parse_broker

    if not url:
        raise EdgefpError("give the fleet's broker with --broker mqtt://HOST:PORT (or set EDGEFP_BROKER)")
    return parse_broker(url, ca_file)


SOME_FAILED = 1  # the exit status of a command on several devices when any of them failed


def device_ports(ports: tuple[str, ...], all_ports: bool) -> list[str]:
    """The devices a command works on: the --port URLs (each once), or with --all every serial port that
    answers the edgefp handshake (which overrides URLs from the environment, EDGEFP_PORT)."""
    if all_ports and ports and click.get_current_context().get_parameter_source("ports") != ParameterSource.ENVIRONMENT:
        raise EdgefpError("give --port URL (repeatable) or --all, not both")
    if all_ports:
        from edgefp.firmware_host.link.ports import answering

        found = answering()
        if not found:
            raise EdgefpError(
                "no serial port answers the edgefp handshake; connect a device and check 'edgefp devices --probe', "
                "or name it with --port URL"
            )
        return found
    if not ports or "" in ports:
        raise EdgefpError("give the device with --port URL (repeatable for several), or --all")
    return list(dict.fromkeys(ports))


def on_devices(ports: list[str], key_file: str | None, operation, *, task: str, summary, as_json: bool) -> int:
    """``operation(device, progress)`` on several devices at once, each opened by its URL
    (:func:`~edgefp.firmware_host.link.fanout.on_each`): a line of progress per device on stderr while it
    runs, then a table (device, result, seconds, and ``summary(result)`` or the error), or with ``--json``
    a list of objects (device, ok, error, seconds, result). Returns the exit status: 0 when every device
    succeeded, :data:`SOME_FAILED` when any failed."""
    from edgefp.firmware_host.link.client import open_device as open_url
    from edgefp.firmware_host.link.fanout import on_each

    key = read_key(key_file)

    def work(port: str, progress):
        with open_url(port, key=key) as device:
            return operation(device, progress)

    with DeviceLines(ports, task, enabled=not as_json) as lines:
        outcomes = on_each(ports, work, on_progress=lines.progress, on_done=lines.done)
    width = max(len("device"), *(len(port) for port in ports))
    table = [f"{'device':<{width}}  result  seconds"] + [
        f"{o.port:<{width}}  {'ok' if o.ok else 'FAILED':<6}  {o.seconds:7.2f}  "
        + (summary(o.result) if o.ok else o.error)
        for o in outcomes
    ]
    failed = sum(not outcome.ok for outcome in outcomes)
    table.append(f"{len(outcomes) - failed} of {len(outcomes)} devices ok")
    if as_json:
        import json

        click.echo(json.dumps([outcome.to_dict() for outcome in outcomes], indent=1))
    else:
        for line in table:
            click.echo(line)
    return SOME_FAILED if failed else 0


class DeviceLines:
    """One line per device on stderr while work runs on several at once: redrawn in place on a terminal;
    otherwise plain lines, when a device starts, every :data:`LINE_EVERY_S` seconds of its progress, and
    when it ends."""

    LINE_EVERY_S = 10.0
    REDRAW_EVERY_S = 0.1

    def __init__(self, ports: list[str], task: str, enabled: bool = True):
        self.task, self.enabled, self.tty = task, enabled, enabled and sys.stderr.isatty()
        self.width = max(len(port) for port in ports)
        self.states = {port: f"{task} ..." for port in ports}
        self._lock = threading.Lock()
        self._drawn = 0
        self._next: dict[str, float] = {}

    def __enter__(self) -> DeviceLines:
        for port in self.states:
            self._show(port, self.states[port], now=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.tty:
            with self._lock:
                self._redraw()

    def progress(self, port: str, done: int, total: int) -> None:
        self._show(port, f"{self.task} {100 * done // max(total, 1)}%", now=False)

    def done(self, outcome) -> None:
        verdict = "done" if outcome.ok else f"FAILED: {outcome.error}"
        self._show(outcome.port, f"{verdict} ({outcome.seconds:.1f} s)", now=True)

    def _show(self, port: str, text: str, *, now: bool) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.states[port] = text
            moment = time.monotonic()
            if not now and moment < self._next.get(port, 0.0):
                return
            self._next[port] = moment + (self.REDRAW_EVERY_S if self.tty else self.LINE_EVERY_S)
            if self.tty:
                self._redraw()
            else:
                click.echo(f"{port:<{self.width}}  {text}", err=True)

    def _redraw(self) -> None:
        columns = shutil.get_terminal_size().columns
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        lines = [f"\x1b[2K{f'{port:<{self.width}}  {text}'[: columns - 1]}" for port, text in self.states.items()]
        click.echo(up + "\n".join(lines), err=True)
        self._drawn = len(lines)


def lines_wanted(as_json: bool) -> bool:
    """Whether a live command prints JSON lines (with --json, or into a pipe) rather than a console."""
    return as_json or not sys.stdout.isatty()


def score_lines(report: dict, source: str, detail: str) -> list[str]:
    """The human-readable summary of a scored data set."""
    lines = [f"{report['n']} samples from {source}"]
    if report["accuracy"] is not None:
        lines.append(f"  accuracy {percent(report['accuracy'])} on {report['n_known']} samples of the model's classes")
    lines.append(f"  flagged OOD {percent(report['ood_rate'])} ({detail})")
    if report["out"]:
        lines.append(f"  wrote {report['out']}")
    return lines


def output_lines(report: dict, source: str) -> list[str]:
    """The human-readable summary of a model's raw outputs (a bundle without a fingerprint)."""
    shapes = ", ".join(str(shape) for shape in report["outputs"])
    lines = [f"{report['n']} samples from {source}: outputs {shapes} per sample (no OOD check: no fingerprint)"]
    if report["accuracy"] is not None:
        lines.append(f"  argmax equals y on {percent(report['accuracy'])}")
    if report["out"]:
        lines.append(f"  wrote {report['out']}")
    return lines


class ProgressBar:
    """Shows the library's progress (``progress(task, done, total)``, :mod:`edgefp.progress`) on stderr: a bar
    on a terminal, a few plain lines otherwise. ``with ProgressBar() as progress: train(..., progress=progress)``."""

    LINE_EVERY_S = 10.0

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.task: str | None = None
        self.done = 0
        self._bar = None
        self._start = self._next_line = 0.0

    def __enter__(self) -> ProgressBar:
        return self

    def __call__(self, task: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if task != self.task:
            self._end(finished=False)
            self._begin(task, total)
        step, self.done = done - self.done, done
        if self._bar is not None:
            self._bar.update(step)
        elif time.monotonic() >= self._next_line:
            click.echo(f"{task}: {100 * done // total}%", err=True)
            self._next_line = time.monotonic() + self.LINE_EVERY_S
        if done >= total:
            self._end(finished=True)

    def counter(self, task: str):
        """A ``progress(done, total)`` callback (the link's: bytes flashed, samples run) for ``task``."""
        return lambda done, total: self(task, done, total)

    def _begin(self, task: str, total: int) -> None:
        self.task, self.done, self._start = task, 0, time.monotonic()
        if sys.stderr.isatty():
            self._bar = click.progressbar(length=total, label=task, file=sys.stderr)
            self._bar.__enter__()
        else:
            click.echo(f"{task} ...", err=True)
            self._next_line = self._start + self.LINE_EVERY_S

    def _end(self, *, finished: bool) -> None:
        if self.task is None:
            return
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
        elif finished:
            click.echo(f"{self.task}: done in {time.monotonic() - self._start:.1f} s", err=True)
        self.task = None

    def __exit__(self, *exc) -> None:
        self._end(finished=False)


class LogLines(logging.Handler):
    """The library's log records as lines on stderr: ``edgefp: TEXT``, ``edgefp: warning: TEXT``."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        click.echo(f"edgefp: warning: {text}" if record.levelno >= logging.WARNING else f"edgefp: {text}", err=True)


def show_library_logs() -> None:
    """Have the library's log records (logger ``edgefp``, INFO and up) printed by :class:`LogLines`, once."""
    logger = logging.getLogger("edgefp")
    if not any(isinstance(handler, LogLines) for handler in logger.handlers):
        logger.addHandler(LogLines())
    logger.setLevel(logging.INFO)
