"""The ``edgefp`` command line: thin wrappers over the library, with one way to report and to fail.

Every option's default can be set by an environment variable ``EDGEFP_<COMMAND>_<OPTION>``
(e.g. ``EDGEFP_TRAIN_EPOCHS=50``). User errors print one line ``edgefp: error: ...`` and exit with
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import sys

import click

from edgefp import __version__
from edgefp.errors import EdgefpError
from edgefp.limits import MAX_INVOKES


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
    help="Comma-separated layers watched by autoencoders, 'logits' for the logits "
    "[default: every layer with a kernel below the penultimate one].",
)
FPR_OPTION = click.option(
    "--fpr",
    type=FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="Target false-positive rate of the OOD threshold.",
)


def _emit(report: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        for line in lines:
            click.echo(line)


def _layers(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",") if name.strip()] if value else None


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:5.1f}%"


@click.group(context_settings={"auto_envvar_prefix": "EDGEFP", "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgefp")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug: bool) -> None:
    """Fingerprint TinyML classifiers, deploy them int8, and flag inputs they have never seen.

    \b
    Example:
      edgefp train --data digits:train:0-4 --out run/
      edgefp score run/ --data digits:test --out scores.npz
    """


PORT_OPTION = click.option(
    "--port",
    required=True,
    envvar="EDGEFP_PORT",
    help="Device URL: a serial port (/dev/ttyACM0, COM3), socket://HOST:PORT, or a pty path [env EDGEFP_PORT].",
)
KEY_OPTION = click.option(
    "--key-file",
    type=click.Path(dir_okay=False),
    envvar="EDGEFP_KEY_FILE",
    help="Shared key of an agent that listens beyond this machine [env EDGEFP_KEY_FILE].",
)


def _read_key(path: str | None) -> bytes | None:
    """The shared key in a key file (surrounding white space ignored): at least 16 bytes."""
    from edgefp.limits import MIN_KEY_BYTES

    if path is None:
        return None
    with open(path, "rb") as handle:
        key = handle.read(1 << 16).strip()
    if len(key) < MIN_KEY_BYTES:
        raise EdgefpError(
            f"{path}: the key has {len(key)} bytes, give at least {MIN_KEY_BYTES} "
            "(make one with: python3 -c 'import secrets; print(secrets.token_hex(32))' > KEYFILE)"
        )
    return key


def _open(port: str, key_file: str | None):
    from edgefp.firmware_host.link.client import open_device

    return open_device(port, key=_read_key(key_file))


TRAIN_EXAMPLE = "Example: edgefp train --data digits:train:0-4 --data field.reviewed.npz --out run/ --seed 1"


@cli.command(epilog=TRAIN_EXAMPLE)
@click.option(
    "--data",
    required=True,
    multiple=True,
    help="Labelled training data: FILE.npz[:train|test][:CLASSES] or digits; repeat to train on several.",
)
@click.option("--out", required=True, type=click.Path(), help="RUN directory to create.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Classifier epochs [default: automatic].")
@SEED_OPTION
@LAYERS_OPTION
@FPR_OPTION
@FORCE_OPTION
@JSON_OPTION
def train(data, out, epochs, seed, layers, fpr, force, as_json):
    """Train a TinyML classifier chosen from the data's shape, then fingerprint it.

    Images (H, W, C) get a small CNN, sequences (T, C) a 1-D CNN, vectors an MLP. A fifth of the
    data is held out of all training and calibrates the OOD threshold.
    """
    from edgefp.data import load_all
    from edgefp.fsutil import check_directory_output
    from edgefp.trainer import train as train_run

    check_directory_output(out, "run", force=force)  # before the training, not after
    dataset = load_all(data, require_labels=True)
    fingerprint = train_run(dataset, epochs=epochs, seed=seed, layers=_layers(layers), fpr=fpr)
    fingerprint.save(out, force=force)
    _report_run(fingerprint, out, as_json)


@cli.command(epilog="Example: edgefp fingerprint --model my_model.keras --data train.npz --out run/")
@click.option("--model", required=True, type=click.Path(), help="Your Keras classifier (.keras).")
@click.option("--data", required=True, help="In-distribution inputs as the model takes them (labels not needed).")
@click.option("--out", required=True, type=click.Path(), help="RUN directory to create.")
@LAYERS_OPTION
@FPR_OPTION
@click.option("--epochs", type=click.IntRange(1), default=None, help="Autoencoder epochs [default: automatic].")
@SEED_OPTION
@FORCE_OPTION
@JSON_OPTION
def fingerprint(model, data, out, layers, fpr, epochs, seed, force, as_json):
    """Fingerprint a Keras classifier you already have (NeuralFP)."""
    from edgefp.data import load
    from edgefp.fsutil import check_directory_output
    from edgefp.trainer import fingerprint_model

    check_directory_output(out, "run", force=force)
    fp = fingerprint_model(model, load(data), layers=_layers(layers), fpr=fpr, epochs=epochs, seed=seed)
    fp.save(out, force=force)
    _report_run(fp, out, as_json)


def _report_run(fp, out: str, as_json: bool) -> None:
    layers = [
        {
            "name": layer.name,
            "kind": layer.kind,
            "features": layer.features,
            "bottleneck": layer.bottleneck,
            "params": layer.params,
        }
        for layer in fp.layers_
    ]
    report = {
        "run": out,
        "classifier_params": int(fp.model_.count_params()),
        "fingerprint_params": fp.fingerprint_params(),
        "layers": layers,
        "threshold": fp.threshold_,
        "target_fpr": fp.fpr,
        "n_fit": fp.n_fit_,
        "n_holdout": fp.n_holdout_,
        "fingerprint_seconds": round(fp.fit_seconds_, 2),
    }
    ratio = report["fingerprint_params"] / report["classifier_params"]
    lines = [f"wrote {out} (fingerprint fitted in {fp.fit_seconds_:.1f} s)"]
    for row in layers:
        detail = f" -> {row['bottleneck']}" if row["bottleneck"] else ""
        lines.append(f"  {row['name']}: {row['kind']}, {row['features']} features{detail} ({row['params']} params)")
    lines.append(
        f"  fingerprint: {report['fingerprint_params']} params "
        f"({100 * ratio:.0f}% of the classifier's {report['classifier_params']})"
    )
    lines.append(
        f"  OOD threshold {fp.threshold_:.3f} at {100 * fp.fpr:.0f}% false positives "
        f"on {fp.n_holdout_} held-out samples"
    )
    _emit(report, as_json, lines)


RUNTIME_OPTION = click.option(
    "--runtime",
    type=click.Choice(["litert", "tflm", "edgetpu", "firmware"]),
    default="litert",
    show_default=True,
    help="Interpreter for a bundle: LiteRT, TFLite Micro, LiteRT with the Edge TPU delegate, or the edgefp "
    "firmware's engine built for this machine.",
)


@cli.command(epilog="Example: edgefp score bundle/ --data digits:test --out scores.npz --runtime tflm")
@click.argument("model", type=click.Path())
@click.option("--data", required=True, help="Data to score: FILE.npz[:train|test][:CLASSES] or digits.")
@click.option(
    "--out",
    default=None,
    type=click.Path(),
    help="Score file to write (.npz: pred, probs, ood_score, is_ood, layer_errors).",
)
@RUNTIME_OPTION
@FORCE_OPTION
@JSON_OPTION
def score(model, data, out, runtime, force, as_json):
    """Classify data and flag out-of-distribution samples, with a RUN (float, on the host) or a
    bundle (int8, on the chosen runtime); for a bundle without a fingerprint, its raw outputs."""
    from edgefp.data import load
    from edgefp.fsutil import check_file_output
    from edgefp.ood import is_score_file

    if out:  # refused now rather than after the scoring
        check_file_output(out, force=force, written_by_edgefp=is_score_file, kind="score file")
    if not os.path.exists(model):
        raise EdgefpError(
            f"{model}: no such RUN directory or bundle; create one with 'edgefp train' or 'edgefp convert'"
        )
    if os.path.isdir(model) and os.path.exists(os.path.join(model, "fingerprint.json")):
        from edgefp.trainer import NeuralFingerprint

        dataset = load(data)
        fp = NeuralFingerprint.load(model)
        scores, labels, threshold, runtime = fp.score(dataset.x), fp.label_values_, fp.threshold_, "float"
    else:
        from edgefp.bundle import Bundle

        bundle = Bundle.load(model)
        if not bundle.fingerprinted:
            return _score_outputs(bundle, data, out, runtime, force, as_json)
        dataset = load(data)
        scores, labels, threshold = bundle.score(dataset.x, runtime), bundle.label_values, bundle.threshold
    if out:
        scores.save(out, force=force)
    report = scores.summary(dataset.y, labels)
    report.update({"data": data, "model": model, "runtime": runtime, "threshold": threshold, "out": out})
    lines = _score_lines(report, f"{data} ({runtime})", f"threshold {threshold:.3f}")
    _emit(report, as_json, lines)


def _score_outputs(bundle, data: str, out: str | None, runtime: str, force: bool, as_json: bool) -> None:
    """score for a bundle without a fingerprint: raw outputs and their argmax."""
    from edgefp.wrap import load_inputs

    dataset = load_inputs(data, bundle)
    outputs = bundle.score(dataset.x, runtime)
    if out:
        outputs.save(out, force=force)
    report = outputs.summary(dataset.y)
    report.update(data=data, model=bundle.source, runtime=runtime, out=out)
    _emit(report, as_json, _output_lines(report, f"{data} ({runtime})"))


def _output_lines(report: dict, source: str) -> list[str]:
    """The human-readable summary of a model's raw outputs (a bundle without a fingerprint)."""
    shapes = ", ".join(str(shape) for shape in report["outputs"])
    lines = [f"{report['n']} samples from {source}: outputs {shapes} per sample (no OOD check: no fingerprint)"]
    if report["accuracy"] is not None:
        lines.append(f"  argmax equals y on {_percent(report['accuracy'])}")
    if report["out"]:
        lines.append(f"  wrote {report['out']} (output, pred)")
    return lines


def _score_lines(report: dict, source: str, detail: str) -> list[str]:
    """The human-readable summary of a scored data set."""
    lines = [f"{report['n']} samples from {source}"]
    if report["accuracy"] is not None:
        lines.append(f"  accuracy {_percent(report['accuracy'])} on {report['n_known']} samples of the model's classes")
    lines.append(f"  flagged OOD {_percent(report['ood_rate'])} ({detail})")
    if report["out"]:
        lines.append(f"  wrote {report['out']}")
    return lines


@cli.command(epilog="Example: edgefp convert run/ --calib digits:train:0-4 --ood digits:test:5-9 --out digits04/")
@click.argument("run", type=click.Path())
@click.option(
    "--calib",
    required=True,
    multiple=True,
    help="In-distribution samples that set the int8 ranges (at least 20); repeat to use several.",
)
@click.option("--out", required=True, type=click.Path(), help="Bundle to write: a directory, or a single FILE.efp.")
@click.option("--name", default=None, help="Bundle name, C identifier-safe [default: from --out].")
@click.option("--ood", "ood_spec", default=None, help="Out-of-distribution samples: adds AUROC to the parity report.")
@FORCE_OPTION
@JSON_OPTION
def convert(run, calib, out, name, ood_spec, force, as_json):
    """Quantise a RUN to an int8 TFLite bundle, recalibrate its OOD threshold on the int8 model, and
    prove the conversion (float vs int8, LiteRT vs TFLite Micro)."""
    from edgefp.converter.convert import convert as convert_run
    from edgefp.data import load, load_all
    from edgefp.manifest import NAME_RE

    if name is not None and not NAME_RE.fullmatch(name):
        raise EdgefpError(f"--name '{name}' must be 1 to 64 of a-z, 0-9 and '_' (a C identifier)")
    ood_data = load(ood_spec) if ood_spec else None
    manifest = convert_run(run, load_all(calib), out, name=name, ood_data=ood_data, force=force)
    parity, fields = manifest.parity, manifest.to_json()
    report = {key: fields[key] for key in ("name", "flash_bytes", "tflm_arena_bytes", "ops", "parity")}
    report.update(bundle=out, threshold=manifest.score.threshold)
    lines = [
        f"wrote {out} ({manifest.name}): model {manifest.flash_bytes} bytes, "
        f"TFLite Micro arena {manifest.tflm_arena_bytes} bytes",
        f"  {'':28} {'float':>8} {'int8':>8}",
    ]
    rows = [("accuracy", "accuracy"), ("flagged OOD, held-out ID", "id_flagged")]
    if "int8_auroc" in parity:
        rows += [("flagged OOD, --ood", "ood_flagged"), ("OOD AUROC", "auroc")]
    for label, key in rows:
        if f"int8_{key}" in parity:
            lines.append(f"  {label:28} {parity[f'float_{key}']:8.3f} {parity[f'int8_{key}']:8.3f}")
    lines.append(f"  OOD verdicts agree (float vs int8): {_percent(parity['verdict_agreement'])}")
    lines.append(
        f"  LiteRT vs TFLite Micro: identical int8 outputs on {_percent(parity['runtime_identical'])} of "
        f"{parity['runtime_samples']} samples (largest difference {parity['runtime_max_diff_lsb']} LSB), "
        f"same prediction on {_percent(parity['runtime_pred_agreement'])}"
    )
    _emit(report, as_json, lines)


@cli.command(epilog="Example: edgefp wrap kws_ref_model.tflite --out kws.efp --name kws")
@click.argument("model", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Bundle to write: a directory, or a single FILE.efp.")
@click.option("--name", default=None, help="Bundle name, [a-z0-9_] [default: from --out].")
@FORCE_OPTION
@JSON_OPTION
def wrap(model, out, name, force, as_json):
    """Make a bundle of any int8 TFLite model, without a fingerprint: devices run it (no OOD verdicts);
    its data is what the model's input takes, its score file the raw outputs and their argmax."""
    from edgefp.wrap import wrap as wrap_model

    manifest = wrap_model(model, out, name=name, force=force)
    fields = manifest.to_json()
    report = {key: fields[key] for key in ("name", "input", "outputs", "ops", "flash_bytes", "tflm_arena_bytes")}
    report["bundle"] = out
    outputs = ", ".join(f"{spec.dtype}{list(spec.shape)}" for spec in manifest.outputs.raw)
    lines = [
        f"wrote {out} ({manifest.name}): {manifest.input.dtype}{list(manifest.input.shape)} -> {outputs}",
        f"  model {manifest.flash_bytes} bytes, TFLite Micro arena {manifest.tflm_arena_bytes} bytes",
        f"  ops {', '.join(manifest.ops)}",
    ]
    _emit(report, as_json, lines)


@cli.command(epilog="Example: edgefp inspect digits04/ --json")
@click.argument("bundle", type=click.Path())
@JSON_OPTION
def inspect(bundle, as_json):
    """Show a bundle: sizes, operators, arena, thresholds, layers, hashes, and whether its files verify.

    Exits with status 1 when the files do not verify."""
    from edgefp.bundle import Bundle

    read = Bundle.read(bundle)
    manifest, problems = read.manifest, read.problems()
    fields = manifest.to_json()
    report = {key: fields[key] for key in ("name", "flash_bytes", "tflm_arena_bytes", "ops", "files")}
    engine_arena, engine_line = _engine_arena(read, problems)
    report.update(
        engine_arena_bytes=engine_arena,
        input=list(manifest.input.shape),
        labels=[label.name for label in manifest.labels],
        layers=[
            {k: getattr(layer, k) for k in ("name", "kind", "features", "z_mean", "z_std")} for layer in manifest.layers
        ],
        threshold=manifest.score.threshold if read.fingerprinted else None,
        target_fpr=manifest.score.target_fpr if read.fingerprinted else None,
        verified=not problems,
        problems=problems,
    )
    dtype = manifest.input.dtype
    lines = [
        f"{bundle}: bundle '{manifest.name}' (edgefp {manifest.edgefp_version}, {manifest.created})",
        f"  input {report['input']} {dtype}, classes {', '.join(report['labels'])}"
        if read.fingerprinted
        else f"  input {report['input']} {dtype}, outputs "
        + ", ".join(f"{list(spec.shape)} {spec.dtype}" for spec in manifest.outputs.raw),
        f"  model {manifest.flash_bytes} bytes, TFLite Micro arena {manifest.tflm_arena_bytes} bytes, {engine_line}",
        f"  ops {', '.join(manifest.ops)}",
        f"  OOD threshold {report['threshold']:.3f} at {100 * report['target_fpr']:.0f}% false positives; evidence:"
        if read.fingerprinted
        else f"  no fingerprint (wrapped from {manifest.wrapped_from}): no OOD check",
    ]
    lines += [f"    {layer['name']}: {layer['kind']} ({layer['features']} features)" for layer in report["layers"]]
    lines += [f"  {name}: sha256 {entry.sha256}, {entry.bytes} bytes" for name, entry in manifest.files.items()]
    lines.append("  files verify: yes" if not problems else f"  files verify: NO: {'; '.join(problems)}")
    _emit(report, as_json, lines)
    if problems:
        sys.exit(1)


def _engine_arena(read, problems) -> tuple[int | None, str]:
    """The firmware engine's arena for the bundle's model (measured on this machine), and its line."""
    from edgefp.firmware_host.firmware import engine

    if problems:
        return None, "firmware engine arena not measured (the files do not verify)"
    try:
        needed = engine.arena_needed(read.model_bytes)
    except engine.EngineError as refused:
        return None, f"the firmware engine cannot run it ({refused})"
    except EdgefpError as missing:
        return None, f"firmware engine arena not measured ({missing})"
    return needed, f"firmware engine arena {needed} bytes"


@cli.command("export-c", epilog="Example: edgefp export-c digits04/ --out firmware/model/")
@click.argument("bundle", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Directory for the generated C/C++ sources.")
@FORCE_OPTION
@JSON_OPTION
def export_c_command(bundle, out, force, as_json):
    """Write C/C++ sources for microcontroller firmware: the model array and an OOD config header."""
    from edgefp.bundle import Bundle
    from edgefp.converter.export_c import export_c

    loaded = Bundle.load(bundle)
    written = export_c(loaded.manifest, loaded.model_bytes, out, force=force)
    _emit({"bundle": bundle, "files": written}, as_json, [f"wrote {path}" for path in written])


class _DefaultCommandGroup(click.Group):
    """A group whose first argument may skip the subcommand: ``edgefp bench BUNDLE`` runs ``bench run``."""

    default_command = "run"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_DefaultCommandGroup)
def bench():
    """Time a bundle (edgefp bench BUNDLE), or compare two results (edgefp bench compare A.json B.json)."""


@bench.command("run", epilog="Example: edgefp bench digits04/ --runtime tflm -n 500 --out tflm.json")
@click.argument("bundle", type=click.Path(), required=False)
@click.option("--port", default=None, help="Time the active bundle on this device instead (timed on the device).")
@RUNTIME_OPTION
@click.option(
    "-n", "--runs", type=click.IntRange(1, MAX_INVOKES), default=200, show_default=True, help="Timed invokes."
)
@click.option(
    "--warmup", type=click.IntRange(0, MAX_INVOKES), default=20, show_default=True, help="Untimed invokes first."
)
@click.option("--out", default=None, type=click.Path(), help="Write the result (JSON) here.")
@KEY_OPTION
@FORCE_OPTION
@JSON_OPTION
def bench_run(bundle, port, runtime, runs, warmup, out, key_file, force, as_json):
    """Time a bundle's model on this machine, or the active one on a device (--port): start-up, first
    inference, latency percentiles, throughput. Both give results of one schema."""
    from edgefp import bench as benchmarks
    from edgefp.bundle import Bundle
    from edgefp.fsutil import check_file_output

    if (bundle is None) == (port is None) or port == "":
        raise EdgefpError("give a BUNDLE to time on this machine, or --port URL to time on a device")
    if runs + warmup > MAX_INVOKES:
        raise EdgefpError(f"-n and --warmup add up to {runs + warmup:,}; at most {MAX_INVOKES:,} invokes")
    if out:  # refused now rather than after the benchmark
        check_file_output(out, force=force, written_by_edgefp=benchmarks.is_result, kind="bench result")
    if port is not None:
        from edgefp.firmware_host.link.client import bench as bench_device

        with _open(port, key_file) as device:
            result = bench_device(device, runs=runs, warmup=warmup)
    else:
        result = benchmarks.bench_bundle(Bundle.load(bundle), runtime, runs=runs, warmup=warmup)
    if out:
        benchmarks.save(result, out, force=force)
    latency = result["latency_us"]
    lines = [
        f"{result['target']['label']}: {runs} runs after {warmup} warm-ups",
        f"  start-up {result['init_ms']:.1f} ms, first inference {result['first_inference_us']:.0f} us",
        f"  latency mean {latency['mean']:.1f} us (std {latency['std']:.1f}), p50 {latency['p50']:.1f}, "
        f"p90 {latency['p90']:.1f}, p99 {latency['p99']:.1f}; {result['throughput_per_s']:.0f} inferences/s",
    ]
    if "instructions" in result:
        lines.append(f"  instructions per inference: mean {result['instructions']['mean']:,.0f} (emulated, counted)")
    if out:
        lines.append(f"  wrote {out}")
    _emit({key: value for key, value in result.items() if key != "samples_us"}, as_json, lines)


@bench.command("compare", epilog="Example: edgefp bench compare litert.json tflm.json")
@click.argument("first", type=click.Path())
@click.argument("second", type=click.Path())
@JSON_OPTION
def bench_compare(first, second, as_json):
    """Put two bench results side by side, with B/A ratios (for regressions between runtimes, boards
    or versions)."""
    from edgefp import bench as benchmarks

    a, b = benchmarks.load(first), benchmarks.load(second)
    rows = benchmarks.compare(a, b)
    lines = [f"A: {a['target']['label']}", f"B: {b['target']['label']}", f"{'':22} {'A':>12} {'B':>12} {'B/A':>8}"]
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        mark = {True: "  better", False: "  worse", None: ""}[row["b_better"]]
        lines.append(f"{row['metric']:22} {row['a']:12.1f} {row['b']:12.1f} {ratio:>8}{mark}")
    _emit({"a": a["target"], "b": b["target"], "rows": rows}, as_json, lines)


@cli.command(epilog="Example: edgefp report digits04/ --data digits:test:0-4 --ood digits:test:5-9 --out report/")
@click.argument("bundle", type=click.Path())
@click.option("--data", required=True, help="In-distribution data (labels add a confusion matrix).")
@click.option("--ood", "ood_specs", multiple=True, help="Out-of-distribution data; repeat for several sets.")
@click.option("--bench", "bench_files", multiple=True, type=click.Path(), help="Bench result (JSON); repeatable.")
@click.option("--board", default=None, help="Board whose flash and RAM budget the bundle is drawn against.")
@RUNTIME_OPTION
@click.option("--out", required=True, type=click.Path(), help="Directory for index.html and its figures.")
@FORCE_OPTION
@JSON_OPTION
def report(bundle, data, ood_specs, bench_files, board, runtime, out, force, as_json):
    """Write a self-contained HTML report: the fingerprint, ROC curves, confusion matrix, latency
    histograms and the bundle's sizes against a board's budget."""
    from edgefp import bench as benchmarks
    from edgefp.bundle import Bundle
    from edgefp.data import load
    from edgefp.firmware_host.boards import fit_problems, get_board
    from edgefp.report import build_report

    loaded = Bundle.load(bundle)
    if not loaded.fingerprinted:  # data as the model's input takes it
        from edgefp.wrap import load_inputs

        load = functools.partial(load_inputs, bundle=loaded)
    target = get_board(board) if board else None
    page = build_report(
        loaded,
        load(data),
        [load(spec) for spec in ood_specs],
        [benchmarks.load(path) for path in bench_files],
        None if target is None else dataclasses.asdict(target),
        out,
        runtime=runtime,
        force=force,
    )
    lines = [f"wrote {page}"]
    problems = (
        [] if target is None else fit_problems(target, loaded.manifest.flash_bytes, loaded.manifest.tflm_arena_bytes)
    )
    if target is not None:
        lines.append(f"  {target.name}: " + ("; ".join(problems) if problems else "the bundle fits"))
    _emit({"report": page, "board": board, "fit_problems": problems}, as_json, lines)


def _advance(bar):
    """A ``progress(done, total)`` callback moving a Progress bar to ``done``."""
    return lambda done, total: bar.update(done - bar.done)


@cli.command(epilog="Example: edgefp devices --probe")
@click.option("--probe", is_flag=True, help="Say which ports answer the edgefp handshake.")
@JSON_OPTION
def devices(probe, as_json):
    """Serial ports with their USB VID:PID, serial number and description."""
    from serial.tools.list_ports import comports

    from edgefp.firmware_host.link.client import open_device

    found = []
    for port in sorted(comports(), key=lambda p: p.device):
        entry = {
            "port": port.device,
            "vid_pid": f"{port.vid:04x}:{port.pid:04x}" if port.vid is not None else None,
            "serial_number": port.serial_number,
            "description": port.description,
        }
        if probe:
            try:
                with open_device(port.device, timeout=0.3, retries=1) as device:
                    entry["edgefp"] = {"board": device.info.board, "runtime": device.info.runtime}
            except EdgefpError:
                entry["edgefp"] = None
        found.append(entry)
    lines = [
        f"{e['port']:<16} {e['vid_pid'] or '-':<10} {e['serial_number'] or '-':<18} {e['description']}" for e in found
    ]
    if probe:
        lines = [
            f"{line}  [{'edgefp ' + e['edgefp']['board'] if e['edgefp'] else 'not edgefp'}]"
            for line, e in zip(lines, found)
        ]
    _emit({"ports": found}, as_json, lines or ["no serial ports found"])


@cli.command(epilog="Example: edgefp info --port /dev/ttyACM0 --json")
@PORT_OPTION
@KEY_OPTION
@JSON_OPTION
def info(port, key_file, as_json):
    """What a device is and holds: protocol, board, runtime, budgets, active bundle, slots."""
    from edgefp.firmware_host.link.client import info as device_info

    with _open(port, key_file) as device:
        report = device_info(device)
    lines = [f"{port}:"] + [f"  {key}: {value}" for key, value in report.items() if key != "url"]
    if not report.get("active"):
        lines.append("  no bundle active: flash one with 'edgefp flash BUNDLE --port ...'")
    _emit(report, as_json, lines)


@cli.command(epilog="Example: edgefp flash digits04.efp --port /dev/ttyACM0")
@click.argument("bundle", type=click.Path())
@PORT_OPTION
@KEY_OPTION
@JSON_OPTION
def flash(bundle, port, key_file, as_json):
    """Upload a bundle to a device in chunks, have the device verify it, and activate it (nothing is
    uploaded when the device already runs it)."""
    from edgefp.bundle import Bundle
    from edgefp.firmware_host.link.client import flash as flash_device
    from edgefp.progress import Progress

    archive = Bundle.load(bundle).archive_bytes()
    with _open(port, key_file) as device, Progress(f"flashing {bundle}", len(archive), enabled=not as_json) as bar:
        report = flash_device(device, archive, progress=_advance(bar))
    state = "already active, nothing uploaded" if report["skipped"] else "verified and active"
    lines = [f"{report['name']} ({report['bytes']} bytes) on {port}: {state} in {report['seconds']:.2f} s"]
    if report["uploaded"]:
        report["efficiency"] = report["bytes"] / report["wire_bytes"]
        lines.append(f"  {report['wire_bytes']} bytes on the wire (payload / wire = {report['efficiency']:.3f})")
    _emit(report, as_json, lines)


@cli.command(epilog="Example: edgefp infer --port /dev/ttyACM0 --data digits:test --out device.npz")
@PORT_OPTION
@click.option("--data", required=True, help="Data to run on the device: FILE.npz[:train|test][:CLASSES] or digits.")
@click.option("--out", default=None, type=click.Path(), help="Score file to write (as 'edgefp score' writes it).")
@KEY_OPTION
@FORCE_OPTION
@JSON_OPTION
def infer(port, data, out, key_file, force, as_json):
    """Run every sample on the device: prediction and OOD check happen on the device itself."""
    from edgefp.bundle import Bundle
    from edgefp.data import load
    from edgefp.firmware_host.link.client import infer_samples, manifest
    from edgefp.fsutil import check_file_output
    from edgefp.ood import is_score_file
    from edgefp.progress import Progress
    from edgefp.wrap import load_inputs

    if out:
        check_file_output(out, force=force, written_by_edgefp=is_score_file, kind="score file")
    with _open(port, key_file) as device:
        spec = Bundle(manifest(device), {}, source=port)
        dataset = load(data) if spec.fingerprinted else load_inputs(data, spec)
        with Progress("inferring", len(dataset), enabled=not as_json) as bar:
            scores, latencies = infer_samples(device, dataset.x, progress=_advance(bar))
    if out:
        scores.save(out, force=force)
    if not spec.fingerprinted:
        report = scores.summary(dataset.y)
        report.update(data=data, port=port, out=out, device_latency_us=float(latencies.mean()))
        return _emit(report, as_json, _output_lines(report, f"{data} on {port}"))
    labels = [label.value for label in spec.manifest.labels]
    report = scores.summary(dataset.y, labels)
    report.update(data=data, port=port, out=out, device_latency_us=float(latencies.mean()))
    lines = _score_lines(report, f"{data} on {port}", f"{latencies.mean():.0f} us per inference on the device")
    _emit(report, as_json, lines)


@cli.command("pull-ood", epilog="Example: edgefp pull-ood --port /dev/ttyACM0 --out review/")
@PORT_OPTION
@click.option("--out", required=True, type=click.Path(), help="Directory for ood.npz (samples and scores).")
@KEY_OPTION
@FORCE_OPTION
@JSON_OPTION
def pull_ood(port, out, key_file, force, as_json):
    """Fetch the device's recent out-of-distribution inputs with their scores, for a human to review."""
    import numpy as np

    from edgefp.firmware_host.link.client import manifest
    from edgefp.firmware_host.link.client import pull_ood as pull
    from edgefp.fsutil import atomic_directory, check_directory_output

    check_directory_output(out, "OOD samples directory", force=force)
    with _open(port, key_file) as device:
        samples = pull(device)
        spec = manifest(device).input
    x_q = np.stack([sample["x"] for sample in samples]) if samples else np.zeros((0, *spec.shape), np.int8)
    with atomic_directory(out, "OOD samples directory", force=force) as tmp:
        np.savez(
            os.path.join(tmp, "ood.npz"),
            x_int8=x_q,
            x=(x_q.astype(np.float32) - spec.zero_point) * np.float32(spec.scale),
            ood_score=np.array([sample["score"] for sample in samples], np.float32),
            pred=np.array([sample["pred"] for sample in samples], np.int64),
            timestamp_ms=np.array([sample["timestamp_ms"] for sample in samples], np.int64),
        )
    path = os.path.join(out, "ood.npz")
    lines = [f"{len(samples)} OOD samples from {port} -> {path} (x: the model's preprocessed input)"]
    _emit({"port": port, "samples": len(samples), "out": path}, as_json, lines)


@cli.command(epilog="Example: edgefp record --port /dev/ttyACM0 --out field.npz --count 500 --ood-only")
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

    lines_out = as_json or not sys.stdout.isatty()

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
        key=_read_key(key_file),
        on_sample=on_sample,
        on_status=lambda text: click.echo(f"edgefp: {text}", err=True),
    )
    if not lines_out:
        click.echo()
    lines = [
        f"{report['samples']} samples in {out} ({report['recorded']} new, {report['flagged']} flagged OOD in all), "
        f"{report['samples_per_s'] or 0:.1f} samples/s"
    ]
    if report["lost"]:
        lines.append(f"  {report['lost']} inputs left the device's log before they could be read")
    _emit(report, as_json, lines)


@cli.command(epilog="Example: edgefp review field.npz --bundle digits04/ --reference digits:train:0-4")
@click.argument("data_path", metavar="DATA.npz", type=click.Path(dir_okay=False))
@click.option("--bundle", default=None, type=click.Path(), help="Score the samples with this bundle; its classes.")
@click.option("--port", default=None, help="Take the model (classes, layers) from the bundle active on this device.")
@click.option("--reference", default=None, help="Labelled in-distribution data to show the nearest examples from.")
@click.option("--labels", "labels_path", default=None, type=click.Path(dir_okay=False), help="Labels file.")
@click.option("--all", "everything", is_flag=True, help="Every sample, not only those flagged out of distribution.")
@click.option(
    "--http-port", type=click.IntRange(0, 65535), default=0, help="Serve on 127.0.0.1:PORT [default: a free one]."
)
@click.option(
    "--export",
    "export_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the training file now and exit.",
)
@click.option("--force", is_flag=True, help="Replace an earlier export of the same data (never another file).")
@KEY_OPTION
@JSON_OPTION
def review(
    data_path, bundle, port, reference, labels_path, everything, http_port, export_path, force, key_file, as_json
):
    """Label out-of-distribution samples in a local web page (loopback only, works offline): each shown as
    people look at it, beside its nearest in-distribution examples and each layer's evidence, most
    out of distribution first; a known class, a new class by name, or noise, one key each. Labels are
    saved as they go (DATA.labels.json); the page's export (or --export) writes a training file.
    Prints the page's URL on its first line."""
    from edgefp.review import Review, ReviewServer

    options = {"everything": everything}
    if bundle and port:
        raise EdgefpError("give --bundle or --port, not both: the model comes from one of them")
    if bundle:
        from edgefp.bundle import Bundle

        options["bundle"] = Bundle.load(bundle)
    elif port:
        from edgefp.firmware_host.link.client import manifest

        with _open(port, key_file) as device:
            options["manifest"] = manifest(device)
    if reference:
        from edgefp.data import load

        options["reference"] = load(reference)
    session = Review(data_path, labels_path=labels_path, export_path=export_path, force=force, **options)
    if export_path:
        report = session.export()
        classes = ", ".join(f"{name} {n}" for name, n in report["classes"].items())
        return _emit(report, as_json, [f"wrote {report['out']}: {report['samples']} samples ({classes})"])
    server = ReviewServer(session, http_port)
    click.echo(server.url)
    state = session.state()
    details = {"url": server.url, "queued": state["queued"], "labels": state["labels_file"], "export": state["export"]}
    lines = [
        f"{state['queued']} of {state['samples']} samples to review; labels saved to {state['labels_file']}, "
        f"the page's export writes {state['export']}; Ctrl-C stops"
    ]
    _emit(details, as_json, lines)
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.close()


@cli.command(epilog="Example: edgefp monitor --port /dev/ttyACM0 --log events.jsonl")
@PORT_OPTION
@click.option(
    "--log", "log_path", default=None, type=click.Path(dir_okay=False), help="Append events here as JSON lines."
)
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after this many events.")
@click.option("--duration", type=FloatRange(0, min_open=True), default=None, help="Stop after this many seconds.")
@KEY_OPTION
@JSON_OPTION
def monitor(port, log_path, count, duration, key_file, as_json):
    """Live console of the device's inferences (prediction, OOD score and verdict, latency), OOD alerts
    highlighted; JSON lines when piped or with --json; reconnects when the device resets or the link drops."""
    import datetime

    from edgefp.firmware_host.link.monitor import follow

    lines_out = as_json or not sys.stdout.isatty()
    log = open(log_path, "a") if log_path else None  # noqa: SIM115 - closed below

    def on_event(event: dict) -> None:
        line = json.dumps(event)
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
        click.echo(click.style(text, fg="red", bold=True) if event["ood"] else text)

    try:
        follow(
            port,
            on_event,
            lambda text: click.echo(f"edgefp: {text}", err=True),
            key=_read_key(key_file),
            count=count,
            duration=duration,
        )
    finally:
        if log:
            log.close()


@cli.command(
    epilog="Example: edgefp agent --data-dir /var/lib/edgefp --serial /dev/ttyGS0 --samples /run/edgefp/samples.sock"
)
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Where the two bundle slots live.")
@click.option("--board", default="pi", show_default=True, help="Board profile (runtime and budgets).")
@click.option("--serial", "serial_path", default=None, help="Serve on this serial port (e.g. USB gadget /dev/ttyGS0).")
@click.option("--tcp", default=None, help="Serve on HOST:PORT instead; beyond 127.0.0.1 only with --key-file.")
@click.option(
    "--samples",
    "samples_address",
    default=None,
    help="Take windows from the program that owns the sensor: a socket path or 127.0.0.1:PORT (docs/sensors.md).",
)
@KEY_OPTION
def agent(data_dir, board, serial_path, tcp, samples_address, key_file):
    """The on-device agent of a Raspberry Pi or Coral board: serves the device protocol, runs the
    active bundle and its OOD check locally, keeps the last good bundle across restarts. With --samples
    the program that owns the sensor hands it windows of raw values on a local socket."""
    from edgefp.firmware_host.device.agent import Agent

    if (serial_path is None) == (tcp is None):
        raise EdgefpError("give exactly one of --serial PATH and --tcp HOST:PORT")
    device = Agent(data_dir, board, key=_read_key(key_file))
    _serve(device, serial_path, tcp, announce=False, samples_address=samples_address)


@cli.command(
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
def sim(profile, tcp, data_dir, feed, rate, drift_at, drift, drift_to, samples_address):
    """A simulated board: the agent with a board profile's runtime and budgets (microcontroller
    profiles run TFLite Micro and refuse bundles that do not fit). Prints the URL on its first line.
    With --feed it is also a live sensor, replaying data (drifting from --drift-at on, and staying
    drifted) for monitoring and recording.

    --profile qemu-m4 runs the C firmware itself on an emulated Cortex-M4 (QEMU mps2-an386, built with
    arm-none-eabi-gcc on first use; instruction-counted, so bench reports instructions), its sensor fed
    over the chip's second UART; --profile native runs the same firmware built for this machine."""
    try:
        _simulate(profile, tcp, data_dir, feed, rate, drift_at, drift, drift_to, samples_address)
    except _Stopped as stopped:  # everything is cleaned up: now end as the signal would have ended us
        signal.signal(stopped.signum, signal.SIG_DFL)
        os.kill(os.getpid(), stopped.signum)


class _Stopped(BaseException):
    """SIGTERM or SIGHUP arrived: unwind, removing the emulator and the temporary slots, then end by it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _simulate(profile, tcp, data_dir, feed, rate, drift_at, drift, drift_to, samples_address) -> None:
    """The body of ``edgefp sim``; SIGTERM and SIGHUP unwind it (raising _Stopped)."""
    import tempfile

    from edgefp.data import load
    from edgefp.firmware_host.boards import get_board
    from edgefp.firmware_host.device.agent import Agent
    from edgefp.firmware_host.device.feed import feed_agent, feed_samples
    from edgefp.firmware_host.firmware.launch import start

    if drift_at is None and (drift or drift_to):
        raise EdgefpError("--drift and --drift-to need --drift-at, the sample the drift starts at")
    if drift_at is not None and (drift is None) == (drift_to is None):
        raise EdgefpError("--drift-at needs one of --drift KIND and --drift-to DATA")
    if drift_at is not None and not feed:
        raise EdgefpError("--drift-at drifts the fed samples: give --feed DATA too")
    sensor = feed_samples(load(feed).x, drift_at, drift, load(drift_to).x if drift_to else None) if feed else None

    def unwind(signum, _frame):
        raise _Stopped(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, unwind)
    if get_board(profile).launcher is not None:
        if data_dir or samples_address:
            raise EdgefpError(f"--data-dir and --samples are for simulated boards; {profile} keeps bundles in flash")
        with start(profile, tcp=tcp) as device:
            click.echo(device.url)
            sys.stdout.flush()
            if sensor is not None:
                device.feed(sensor[0], rate, repeat_from=sensor[1])
            device.process.wait()
        return
    with tempfile.TemporaryDirectory(prefix="edgefp-sim-", ignore_cleanup_errors=True) as scratch:
        device = Agent(data_dir or scratch, profile)
        if sensor is not None:
            feed_agent(device, sensor[0], rate, repeat_from=sensor[1], warn=_warn)
        _serve(device, None, "127.0.0.1:0" if tcp else None, announce=True, samples_address=samples_address)


@cli.command(
    "export-firmware",
    epilog="Example: edgefp export-firmware --board qemu-m4 --out fw/ --build  (then: make -C fw)",
)
@click.option("--board", required=True, help="Board profile: its budgets, and its port (qemu-m4, native) or template.")
@click.option("--out", required=True, type=click.Path(), help="Directory to write the project to.")
@click.option("--build", "build_it", is_flag=True, help="Also build it (tested ports) and report flash and RAM use.")
@click.option("--bundle", "bundles", multiple=True, type=click.Path(), help="Say if this bundle fits (repeatable).")
@FORCE_OPTION
@JSON_OPTION
def export_firmware(board, out, build_it, bundles, force, as_json):
    """Write the C firmware (device protocol, two bundle slots, int8 engine, OOD check) as a project
    for a board: portable sources, the board's port (or a template to fill in, docs/porting.md) and
    its budgets. Bundles are flashed later over the protocol, without rebuilding."""
    from edgefp.bundle import Bundle
    from edgefp.firmware_host.firmware import build

    loaded = [Bundle.load(path) for path in bundles]
    report = build.export(board, out, force=force)
    lines = [f"firmware for {report['board']} written to {out} (port {report['port']})", f"  build: {report['make']}"]
    if not report["tested"]:
        lines.append(f"  write the board layer in {out}/boards/template/board.c first (docs/porting.md)")
    if build_it:
        report["sizes"] = build.budget_report(board)
        lines += build.budget_lines(report["sizes"])
    report["bundles"] = [build.bundle_ram(bundle, board) for bundle in loaded]
    for ram in report["bundles"]:
        verdict = "fits" if ram["fits"] else f"does NOT fit: {ram['ram_bytes'] - ram['board_ram_bytes']:,} bytes short"
        lines.append(
            f"  {ram['bundle']}: needs {ram['ram_bytes']:,} bytes of the {ram['board_ram_bytes']:,}-byte arena "
            f"(engine {ram['engine_arena_bytes']:,}, score tables and OOD buffer {ram['tables_and_ood_bytes']:,}, "
            f"sensor window {ram['sensor_bytes']:,}): "
            f"{verdict}"
        )
    _emit(report, as_json, lines)


def _serve(device, serial_path: str | None, tcp: str | None, *, announce: bool, samples_address=None) -> None:
    """Serve on a serial port, a TCP address, or (neither) a new pty; print the URL when announcing.
    With ``samples_address``, also open the agent's sample socket there."""
    from edgefp.firmware_host.device import agent as agent_module
    from edgefp.firmware_host.device.samples import SampleServer
    from edgefp.firmware_host.link.transport import open_pty

    if samples_address is not None:
        server = SampleServer(device, samples_address)
        click.echo(f"samples: {server.address}", err=True)

    if tcp is not None:
        host, _, port_text = tcp.rpartition(":")
        if not host or not port_text.isdigit():
            raise EdgefpError(f"--tcp must be HOST:PORT, got '{tcp}'")
        server = agent_module.listen_tcp(device, host, int(port_text))
        click.echo(f"socket://{host}:{server.getsockname()[1]}", err=not announce)
        sys.stdout.flush()
        agent_module.serve_tcp(device, server)
        return
    if serial_path is not None:
        import serial

        try:
            port = serial.Serial(serial_path, timeout=0)
        except serial.SerialException as exc:
            raise EdgefpError(f"cannot open {serial_path}: {exc}") from None
    else:
        port, path = open_pty()
        click.echo(path)
        sys.stdout.flush()
    device.serve(port)


@cli.command(epilog="Example: edgefp demo --out demo-out/")
@click.option(
    "--out", default="demo-out", show_default=True, type=click.Path(), help="Directory for everything the demo writes."
)
@SEED_OPTION
@JSON_OPTION
def demo(out, seed, as_json):
    """The kit end to end on digits: train on 0-4 and fingerprint, convert to int8, then score held-out
    0-4, unseen 5-9 and corrupted digits with the float RUN and the int8 bundle."""
    from edgefp.demo import run_demo

    report = run_demo(out, seed=seed)
    lines = [
        f"{'':22} {'':>5} {'accuracy':^17} {'flagged OOD':^17} {'AUROC':^15}",
        f"{'data':<22} {'n':>5} "
        + " ".join(f"{'float':>8} {'int8':>8}" for _ in range(2))
        + f" {'float':>7} {'int8':>7}",
    ]
    for row in report["rows"]:
        cells = [f"{_percent(row[f'{m}_accuracy']):>8}" for m in ("float", "int8")]
        cells += [f"{_percent(row[f'{m}_ood_rate']):>8}" for m in ("float", "int8")]
        cells += ["      -" if row[f"{m}_auroc"] is None else f"{row[f'{m}_auroc']:7.3f}" for m in ("float", "int8")]
        lines.append(f"{row['set']:<22} {row['n']:>5} " + " ".join(cells))
    parity = report["parity"]
    lines.append("AUROC: held-out 0-4 against each set, OOD as the positive class.")
    identical, same_pred = (
        _percent(parity["runtime_identical"]).strip(),
        _percent(parity["runtime_pred_agreement"]).strip(),
    )
    lines.append(
        f"LiteRT vs TFLite Micro on {parity['runtime_samples']} samples: identical int8 outputs on {identical}, "
        f"same prediction on {same_pred}."
    )
    lines.append(f"TFLite Micro on this machine: {report['tflm_latency_us']:.0f} us per inference (median)")
    device = report["device"]
    lines.append(
        f"{device['description']} at {device['url']}: flashed (payload / wire {device['upload_efficiency']:.3f}), "
        f"{device['identical_to_host']}/{device['samples']} results identical to host scoring on TFLite Micro"
    )
    lines.append(f"RUN in {report['run']}, int8 bundle in {report['bundle']}")
    lines.append(f"report: {report['report']}")
    _emit(report, as_json, lines)


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


def _repository(path: str | None):
    from edgefp.repository import Repository

    return Repository(path)


def _warn(text: str) -> None:
    click.echo(f"edgefp: warning: {text}", err=True)


@cli.group()
def repo():
    """The model repository: verified bundles with an index of their metadata, for 'edgefp select'."""


@repo.command(
    "add",
    epilog="Example: edgefp repo add digits045.efp --parent digits04 --data-added field.reviewed.npz --tag task=digits",
)
@click.argument("bundle", type=click.Path())
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE to file the bundle under; repeatable.")
@click.option("--name", default=None, help="Name in the repository [default: the bundle's own name].")
@click.option("--force", is_flag=True, help="Replace a bundle of the same name.")
@click.option("--parent", default=None, help="The bundle of the repository this one was retrained from.")
@click.option("--data-added", multiple=True, help="Data added to the parent's to train this one; repeatable.")
@REPO_OPTION
@JSON_OPTION
def repo_add(bundle, tags, name, force, parent, data_added, repo, as_json):
    """Verify a bundle and store it (the repository is created when missing), with its lineage: the
    bundle it was retrained from and the data added. Selection prefers a retrained bundle to its
    parent where both fit."""
    from edgefp.repository import parse_pairs

    repository = _repository(repo)
    entry = repository.add(
        bundle, parse_pairs(tags, "--tag"), name=name, force=force, parent=parent, data_added=data_added
    )
    report = {"repo": repository.root, **entry.as_dict()}
    shape = "x".join(str(n) for n in entry.input_shape)
    lines = [f"added {entry.name} ({shape}, {len(entry.labels)} labels) to {repository.root}"]
    if entry.lineage:
        added = ", ".join(f"{item['data']} ({item['samples']} samples)" for item in entry.lineage["data_added"])
        lines.append(f"  retrained from {entry.parent or '-'} with {added or 'no data recorded'}")
    _emit(report, as_json, lines)


@repo.command("list", epilog="Example: edgefp repo list --where task=digits")
@WHERE_OPTION
@REPO_OPTION
@JSON_OPTION
def repo_list(where, repo, as_json):
    """The bundles in the repository, with their input shape, labels and tags."""
    from edgefp.repository import parse_pairs

    repository = _repository(repo)
    entries = repository.entries(parse_pairs(where, "--where"))
    lines = [f"{'name':20} {'input':10} {'labels':>6} {'created':26} {'parent':16} tags"]
    for entry in entries:
        tags = " ".join(f"{key}={value}" for key, value in entry.tags.items())
        shape = "x".join(str(n) for n in entry.input_shape)
        row = f"{entry.name:20} {shape:10} {len(entry.labels):>6} {entry.created or '-':26} {entry.parent or '-':16}"
        lines.append(f"{row} {tags}")
    if not entries:
        lines = [f"no bundles in {repository.root}" + (" match --where" if where else "")]
    _emit({"repo": repository.root, "bundles": [entry.as_dict() for entry in entries]}, as_json, lines)


@repo.command("remove", epilog="Example: edgefp repo remove digits04")
@click.argument("name")
@REPO_OPTION
@JSON_OPTION
def repo_remove(name, repo, as_json):
    """Take a bundle out of the repository and delete its files."""
    repository = _repository(repo)
    entry = repository.remove(name)
    _emit({"repo": repository.root, "removed": entry.name}, as_json, [f"removed {entry.name} from {repository.root}"])


@repo.command("reindex", epilog="Example: edgefp repo reindex --repo models/")
@REPO_OPTION
@JSON_OPTION
def repo_reindex(repo, as_json):
    """Rebuild the index from the stored bundles, skipping (with a warning) any that do not verify."""
    repository = _repository(repo)
    entries, notes = repository.reindex()
    for note in notes:
        _warn(note)
    report = {"repo": repository.root, "bundles": [entry.name for entry in entries], "warnings": notes}
    _emit(report, as_json, [f"indexed {len(entries)} bundles in {repository.root}"])


@cli.command("select", epilog="Example: edgefp select --repo models/ --data node7.npz --where task=digits --top 3")
@REPO_OPTION
@click.option("--data", required=True, help="Unlabeled target data: FILE.npz[:train|test][:CLASSES] or digits.")
@WHERE_OPTION
@click.option("--top", type=click.IntRange(1), default=5, show_default=True, help="Candidates to show.")
@click.option("--deploy", default=None, help="Flash the selected bundle to this device URL (as 'edgefp flash').")
@KEY_OPTION
@JSON_OPTION
def select_command(repo, data, where, top, deploy, key_file, as_json):
    """Pick the model whose fingerprint matches the target data best, or say that none does.

    Each candidate's int8 bundle scores the samples; per layer, their reconstruction errors are
    compared with the fingerprint's held-out errors (Kolmogorov-Smirnov). A match score of at most 1
    and an OOD share within the binomial tolerance of the target false-positive rate mean a fit.
    """
    from edgefp.data import load
    from edgefp.repository import parse_pairs
    from edgefp.selection import select

    repository = _repository(repo)
    report = select(repository, load(data).x, where=parse_pairs(where, "--where"))
    for skipped in report["skipped"]:
        _warn(f"skipped {skipped['name']}: {skipped['reason']}")
    report["data"] = data
    report["candidates"] = report["candidates"][:top]
    lines = [
        f"{data}: {report['n']} samples against {repository.root}",
        f"{'rank':>4} {'name':20} {'match':>7} {'flagged OOD':>11} {'tolerated':>9}  fits",
    ]
    for rank, found in enumerate(report["candidates"], 1):
        lines.append(
            f"{rank:>4} {found['name']:20} {found['match_score']:7.2f} {_percent(found['ood_share']):>11} "
            f"{_percent(found['ood_tolerance']):>9}  {'yes' if found['fits'] else 'no'}"
        )
    lines.append("match: largest per-layer KS distance / its critical value (<= 1 fits)")
    if report["selected"]:
        lines.append(f"selected: {report['selected']}")
    else:
        lines.append(f"verdict: {report['verdict']}: even the best candidate does not match; a human should review")
    report["deployed"] = None
    if deploy and report["selected"]:
        from edgefp.firmware_host.link.client import flash as flash_device

        entry = next(entry for entry in repository.entries() if entry.name == report["selected"])
        archive = repository.load(entry).archive_bytes()
        with _open(deploy, key_file) as device:
            flashed = flash_device(device, archive)
        report["deployed"] = {"port": deploy, **{key: flashed[key] for key in ("name", "bytes", "skipped")}}
        state = "already active there" if flashed["skipped"] else "flashed, verified and active"
        lines.append(f"deployed {report['selected']} to {deploy}: {state}")
    elif deploy:
        lines.append(f"nothing deployed to {deploy}")
    _emit(report, as_json, lines)


@cli.command(epilog="Example: edgefp watch --port /dev/ttyACM0 --repo models/ --ood-rate 0.3 --events drift.jsonl")
@PORT_OPTION
@REPO_OPTION
@click.option(
    "--ood-rate", type=FloatRange(0, 1, min_open=True), default=0.3, show_default=True, help="Act at this rate."
)
@click.option("--window", type=click.IntRange(1), default=None, help="Inputs the rate is over [default: device's].")
@click.option("--interval", type=FloatRange(0), default=1.0, show_default=True, help="Seconds between polls.")
@click.option(
    "--events",
    "events_path",
    default="edgefp-watch.jsonl",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Append each decision here as a JSON line.",
)
@WHERE_OPTION
@click.option("--once", is_flag=True, help="Stop after the first decision (as --count 1).")
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after this many decisions.")
@KEY_OPTION
@JSON_OPTION
def watch(port, repo, ood_rate, window, interval, events_path, where, once, count, key_file, as_json):
    """The drift loop: follow the device's OOD rate; when it reaches --ood-rate, run selection on the
    device's recent OOD samples, flash the model that matches, or else raise a human-review alert."""
    from edgefp.repository import parse_pairs
    from edgefp.watch import DEPLOYED, NO_MATCH, watch_url

    repository = _repository(repo)
    repository.entries()  # a missing repository fails now, not at the first drift
    lines_out = as_json or not sys.stdout.isatty()

    def on_decision(event: dict) -> None:
        for skipped in event["skipped"]:
            _warn(f"skipped {skipped['name']}: {skipped['reason']}")
        if lines_out:
            click.echo(json.dumps(event))
            return
        head = f"{event['time'][11:19]}  OOD rate {_percent(event['ood_rate']).strip()} over {event['window']} inputs"
        scores = ", ".join(f"{c['name']} {c['match_score']:.2f}" for c in event["candidates"])
        head += f", {event['samples']} samples pulled; match: {scores or '-'}"
        if event["decision"] == DEPLOYED:
            click.echo(f"{head}\n  deployed {event['model']} (was {event['active']})")
        elif event["decision"] == NO_MATCH:
            reason = event.get("reason") or "no model of the repository matches the drifted data"
            alert = f"  HUMAN REVIEW: {reason}; {event['active']} stays active (events in {events_path})"
            click.echo(f"{head}\n" + click.style(alert, fg="red", bold=True))
        else:
            click.echo(f"{head}\n  {event['active']} is already the best model")

    if not lines_out:
        click.echo(f"watching {port}: acting at OOD rate {_percent(ood_rate).strip()}; Ctrl-C stops")
    watch_url(
        port,
        repository,
        key=_read_key(key_file),
        on_status=lambda text: click.echo(f"edgefp: {text}", err=True),
        on_decision=on_decision,
        ood_rate=ood_rate,
        window=window,
        interval=interval,
        events_path=events_path,
        where=parse_pairs(where, "--where"),
        decisions=1 if once else count,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn user errors into one line and exit status 2."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = cli.main(args=args, prog_name="edgefp", standalone_mode=False)
    except EdgefpError as exc:
        if debug:
            raise
        click.echo(f"edgefp: error: {_one_line(str(exc))}", err=True)
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
    reported as one line naming the step, with exit status 2 (:mod:`edgefp.isolation`)."""
    from edgefp.isolation import supervised

    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
    supervised(main, command)
