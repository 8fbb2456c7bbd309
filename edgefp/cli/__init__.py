"""The ``edgefp`` command line: it parses, calls the library and prints; nothing else.

Commands live in groups: :mod:`~edgefp.cli.model` (train, fingerprint, convert, wrap, score, inspect,
export-c, bench, report, demo, keys, sign), :mod:`~edgefp.cli.device` (devices, info, flash, infer, pull-ood,
record, monitor, agent, sim, export-firmware) and :mod:`~edgefp.cli.loop` (repo, select, watch,
review); :mod:`~edgefp.cli.common` holds what they share.

Every option's default can be set by an environment variable ``EDGEFP_<COMMAND>_<OPTION>``
(e.g. ``EDGEFP_TRAIN_EPOCHS=50``). User errors print one line ``edgefp: error: ...`` and exit with
status 2; ``--debug`` shows the traceback instead. Library log records are printed on stderr as
``edgefp: ...`` lines.
"""

from edgefp.cli.main import cli, console, main

__all__ = ["cli", "console", "main"]
