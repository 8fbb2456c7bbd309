"""The ``edgefp`` group with its command table, and the one place that turns errors into lines."""

from __future__ import annotations

import importlib
import sys

import click

from edgefp import __version__
from edgefp.cli.common import option_name, show_library_logs
from edgefp.errors import EdgefpError

# Each command and the module of edgefp.cli that defines it, imported only when the command runs (or
# help lists them all): a device command does not import the model commands' modules.
COMMANDS = {
    "train": "model", "fingerprint": "model", "score": "model", "convert": "model", "wrap": "model",
    "inspect": "model", "export-c": "model", "bench": "model", "report": "model", "demo": "model",
    "keys": "model", "sign": "model",
    "devices": "device", "info": "device", "flash": "device", "infer": "device", "pull-ood": "device",
    "record": "device", "monitor": "device", "agent": "device", "sim": "device", "export-firmware": "device",
    "repo": "loop", "select": "loop", "watch": "loop", "review": "loop", "fleet": "fleet", "gateway": "fleet",
}  # fmt: skip
# Commands that run no native code (no model, no interpreter, no firmware): nothing for the crash
# supervisor to report, so they run in this process and start as fast as a plain Python program.
UNSUPERVISED = {"", "devices", "info"}


class CommandTable(click.Group):
    """A group whose commands are looked up in :data:`COMMANDS` and imported when first needed."""

    def list_commands(self, ctx) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx, name: str):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"edgefp.cli.{COMMANDS[name]}")
        return next(command for command in module.COMMANDS if command.name == name)


@click.group(cls=CommandTable, context_settings={"auto_envvar_prefix": "EDGEFP", "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgefp")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug: bool) -> None:
    """Fingerprint TinyML classifiers, deploy them int8, and flag inputs they have never seen.

    \b
    Example:
      edgefp train --data digits:train:0-4 --out run/
      edgefp score run/ --data digits:test --out scores.npz
    """


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn user errors into one line and exit status 2."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    show_library_logs()
    try:
        code = cli.main(args=args, prog_name="edgefp", standalone_mode=False)
    except EdgefpError as exc:
        if debug:
            raise
        click.echo(f"edgefp: error: {_one_line(exc.render(option_name))}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"edgefp: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(2)
    except OSError as exc:
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"edgefp: error: {_one_line(f'{where}{exc.strerror or exc}')}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("edgefp: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def console() -> None:
    """The ``edgefp`` program: :func:`main` in a child process, so that a crash in native code is
    reported as one line naming the step, with exit status 2 (:mod:`edgefp.isolation`); commands that
    run no native code run here."""
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
    if command in UNSUPERVISED:
        main()
    else:
        from edgefp.isolation import supervised

        supervised(main, command)
