"""Commands that make and use models on this machine: train, fingerprint, score, convert, wrap, inspect,
export-c, bench, report, demo."""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import click

from edgefp.cli.common import (
    ALL_OPTION,
    FORCE_OPTION,
    FPR_OPTION,
    JSON_OPTION,
    KEY_OPTION,
    LAYERS_OPTION,
    RUNTIME_OPTION,
    SEED_OPTION,
    ProgressBar,
    device_ports,
    emit,
    layer_names,
    on_devices,
    open_device,
    output_lines,
    percent,
    score_lines,
)
from edgefp.errors import EdgefpError, option
from edgefp.limits import MAX_INVOKES

TRAIN_EXAMPLE = "Example: edgefp train --data digits:train:0-4 --data field.reviewed.npz --out run/ --seed 1"


@click.command(epilog=TRAIN_EXAMPLE)
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
    with ProgressBar(enabled=not as_json) as progress:
        fingerprint = train_run(
            dataset, epochs=epochs, seed=seed, layers=layer_names(layers), fpr=fpr, progress=progress
        )
    fingerprint.save(out, force=force)
    _report_run(fingerprint, out, as_json)


@click.command(epilog="Example: edgefp fingerprint --model my_model.keras --data train.npz --out run/")
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
    options = {"layers": layer_names(layers), "fpr": fpr, "epochs": epochs, "seed": seed}
    with ProgressBar(enabled=not as_json) as progress:
        fp = fingerprint_model(model, load(data), progress=progress, **options)
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
    emit(report, as_json, lines)


@click.command(epilog="Example: edgefp score bundle/ --data digits:test --out scores.npz --runtime tflm")
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
    from edgefp.fsutil import check_file_output
    from edgefp.ood import is_score_file
    from edgefp.scoring import score as score_data

    if out:  # refused now rather than after the scoring
        check_file_output(out, force=force, written_by_edgefp=is_score_file, kind="score file")
    scored = score_data(model, data, runtime)
    if out:
        scored.scores.save(out, force=force)
    report = scored.summary()
    source = f"{data} ({scored.runtime})"
    if not scored.fingerprinted:
        report.update(data=data, model=scored.source, runtime=scored.runtime, out=out)
        return emit(report, as_json, output_lines(report, source))
    report.update(data=data, model=model, runtime=scored.runtime, threshold=scored.threshold, out=out)
    emit(report, as_json, score_lines(report, source, f"threshold {scored.threshold:.3f}"))


@click.command(epilog="Example: edgefp convert run/ --calib digits:train:0-4 --ood digits:test:5-9 --out digits04/")
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
@click.option(
    "--sign", "sign_key", default=None, type=click.Path(dir_okay=False), help="Sign the bundle with this signing.key."
)
@FORCE_OPTION
@JSON_OPTION
def convert(run, calib, out, name, ood_spec, sign_key, force, as_json):
    """Quantise a RUN to an int8 TFLite bundle, recalibrate its OOD threshold on the int8 model, and
    prove the conversion (float vs int8, LiteRT vs TFLite Micro)."""
    from edgefp.manifest import NAME_RE
    from edgefp.signing import load_private_key

    if name is not None and not NAME_RE.fullmatch(name):
        raise EdgefpError(f"--name '{name}' must be 1 to 64 of a-z, 0-9 and '_' (a C identifier)")
    signing_key = load_private_key(sign_key) if sign_key else None  # a bad key is refused before the conversion
    from edgefp.converter.convert import convert as convert_run
    from edgefp.data import load, load_all

    ood_data = load(ood_spec) if ood_spec else None
    manifest = convert_run(
        run, load_all(calib), out, name=name, ood_data=ood_data, force=force, signing_key=signing_key
    )
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
    lines.append(f"  OOD verdicts agree (float vs int8): {percent(parity['verdict_agreement'])}")
    lines.append(
        f"  LiteRT vs TFLite Micro: identical int8 outputs on {percent(parity['runtime_identical'])} of "
        f"{parity['runtime_samples']} samples (largest difference {parity['runtime_max_diff_lsb']} LSB), "
        f"same prediction on {percent(parity['runtime_pred_agreement'])}"
    )
    emit(report, as_json, lines)


@click.command(epilog="Example: edgefp wrap kws_ref_model.tflite --out kws.efp --name kws")
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
    emit(report, as_json, lines)


@click.command(epilog="Example: edgefp inspect digits04/ --json")
@click.argument("bundle", type=click.Path())
@JSON_OPTION
def inspect(bundle, as_json):
    """Show a bundle: sizes, operators, arena, thresholds, layers, hashes, and whether its files verify.

    Exits with status 1 when the files do not verify."""
    from edgefp.bundle import Bundle
    from edgefp.signing import Signature, SignatureError

    read = Bundle.read(bundle)
    manifest, problems = read.manifest, read.problems()
    try:
        found = Signature.unpack(read.signature) if read.signature is not None else None
        signature = {"version": found.version, "key_id": found.key_id.hex()} if found else None
        signed = f"version {found.version}, key id {found.key_id.hex()} (devices check it)" if found else "no"
    except SignatureError as damaged:
        signature, signed = {"error": str(damaged)}, str(damaged)
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
        signature=signature,
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
    lines.append(f"  signed: {signed}")
    emit(report, as_json, lines)
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


@click.command("export-c", epilog="Example: edgefp export-c digits04/ --out firmware/model/")
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
    emit({"bundle": bundle, "files": written}, as_json, [f"wrote {path}" for path in written])


class _DefaultCommandGroup(click.Group):
    """A group whose first argument may skip the subcommand: ``edgefp bench BUNDLE`` runs ``bench run``."""

    default_command = "run"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultCommandGroup)
def bench():
    """Time a bundle (edgefp bench BUNDLE), or compare two results (edgefp bench compare A.json B.json)."""


@bench.command(
    "run", epilog="Example: edgefp bench digits04/ --runtime tflm -n 500 --out tflm.json  (a device: --port URL)"
)
@click.argument("bundle", type=click.Path(), required=False)
@click.option(
    "--port",
    "ports",
    multiple=True,
    help="Time the active bundle on this device instead (timed on the device); repeat it for several at once.",
)
@ALL_OPTION
@RUNTIME_OPTION
@click.option(
    "-n", "--runs", type=click.IntRange(1, MAX_INVOKES), default=200, show_default=True, help="Timed invokes."
)
@click.option(
    "--warmup", type=click.IntRange(0, MAX_INVOKES), default=20, show_default=True, help="Untimed invokes first."
)
@click.option(
    "--out", default=None, type=click.Path(), help="Write the result (JSON) here; several devices: into this directory."
)
@KEY_OPTION
@FORCE_OPTION
@JSON_OPTION
def bench_run(bundle, ports, all_ports, runtime, runs, warmup, out, key_file, force, as_json):
    """Time a bundle's model on this machine, or the active one on a device (--port): start-up, first
    inference, latency percentiles, throughput. Both give results of one schema. Several devices at once
    (--port repeated, or --all) give a table, a result file each in --out (named after the port) and exit
    status 1 when any failed."""
    from edgefp import bench as benchmarks
    from edgefp.bundle import Bundle
    from edgefp.fsutil import check_file_output

    if (bundle is None) == (not ports and not all_ports) or "" in ports:
        raise EdgefpError("give a BUNDLE to time on this machine, or --port URL to time on a device")
    if runs + warmup > MAX_INVOKES:
        raise EdgefpError(f"-n and --warmup add up to {runs + warmup:,}; at most {MAX_INVOKES:,} invokes")
    urls = device_ports(ports, all_ports) if bundle is None else []
    if len(urls) > 1 or all_ports:
        return _bench_devices(urls, runs, warmup, out, key_file, force, as_json)
    if out:  # refused now rather than after the benchmark
        check_file_output(out, force=force, written_by_edgefp=benchmarks.is_result, kind="bench result")
    if urls:
        from edgefp.firmware_host.link.client import bench as bench_device

        with open_device(urls[0], key_file) as device:
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
    emit({key: value for key, value in result.items() if key != "samples_us"}, as_json, lines)


def _bench_devices(urls, runs, warmup, out, key_file, force, as_json) -> int:
    """``bench --port`` on several devices at once; with ``out``, a directory of one result per device."""
    from edgefp import bench as benchmarks
    from edgefp.firmware_host.link.client import bench as bench_device
    from edgefp.fsutil import check_file_output

    paths = {url: os.path.join(out, re.sub(r"[^\w.-]+", "_", url).strip("_") + ".json") for url in urls} if out else {}
    for path in paths.values():  # refused now rather than after the benchmarks
        check_file_output(path, force=force, written_by_edgefp=benchmarks.is_result, kind="bench result")
    if out:
        os.makedirs(out, exist_ok=True)

    def time_it(device, _progress) -> dict:
        result = bench_device(device, runs=runs, warmup=warmup)
        if out:
            benchmarks.save(result, paths[device.url], force=force)
        return {key: value for key, value in result.items() if key != "samples_us"} | {"out": paths.get(device.url)}

    def summary(result: dict) -> str:
        latency = result["latency_us"]
        text = (
            f"p50 {latency['p50']:.1f} us, p99 {latency['p99']:.1f} us, {result['throughput_per_s']:.0f} inferences/s"
        )
        return text + (f" -> {result['out']}" if result["out"] else "")

    return on_devices(urls, key_file, time_it, task="timing", summary=summary, as_json=as_json)


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
    emit({"a": a["target"], "b": b["target"], "rows": rows}, as_json, lines)


@click.command(epilog="Example: edgefp report digits04/ --data digits:test:0-4 --ood digits:test:5-9 --out report/")
@click.argument("bundle", type=click.Path())
@click.option("--data", required=True, help="In-distribution data (labels add a confusion matrix).")
@click.option("--ood", "ood_specs", multiple=True, help="Out-of-distribution data; repeat for several sets.")
@click.option("--bench", "bench_files", multiple=True, type=click.Path(), help="Bench result (JSON); repeatable.")
@click.option("--board", default=None, help="Board whose flash and RAM budget the bundle is drawn against.")
@click.option(
    "--adversarial",
    "adversarial_run",
    default=None,
    type=click.Path(),
    help="The RUN the bundle was converted from: adds a panel of adversarial copies of --data made on it.",
)
@click.option(
    "--budget",
    "budgets",
    multiple=True,
    type=click.FloatRange(0.0, 1.0, min_open=True),
    help="Attack budget for --adversarial, a share of each channel's range; repeatable [default: 0.05 0.1 0.2].",
)
@RUNTIME_OPTION
@click.option("--out", required=True, type=click.Path(), help="Directory for index.html and its figures.")
@FORCE_OPTION
@JSON_OPTION
def report(bundle, data, ood_specs, bench_files, board, adversarial_run, budgets, runtime, out, force, as_json):
    """Write a self-contained HTML report: the fingerprint, ROC curves, confusion matrix, latency
    histograms and the bundle's sizes against a board's budget; with --adversarial RUN, how the bundle
    fares against adversarial inputs."""
    from edgefp import bench as benchmarks
    from edgefp.bundle import Bundle
    from edgefp.firmware_host.boards import fit_problems, get_board
    from edgefp.report import build_report
    from edgefp.scoring import load_for

    if budgets and not adversarial_run:
        raise EdgefpError(
            f"{option('budget')} sets the budget of the attacks of {option('adversarial')}; give that too"
        )
    loaded = Bundle.load(bundle)
    target = get_board(board) if board else None
    dataset = load_for(loaded, data)
    attacked = None
    if adversarial_run:
        attacked = _attack_for_report(loaded, adversarial_run, dataset, budgets, runtime)
    page = build_report(
        loaded,
        dataset,
        [load_for(loaded, spec) for spec in ood_specs],
        [benchmarks.load(path) for path in bench_files],
        None if target is None else dataclasses.asdict(target),
        out,
        runtime=runtime,
        adversarial=attacked,
        force=force,
    )
    lines = [f"wrote {page}"]
    problems = (
        [] if target is None else fit_problems(target, loaded.manifest.flash_bytes, loaded.manifest.tflm_arena_bytes)
    )
    if target is not None:
        lines.append(f"  {target.name}: " + ("; ".join(problems) if problems else "the bundle fits"))
    emit({"report": page, "board": board, "fit_problems": problems}, as_json, lines)


def _attack_for_report(bundle, run_dir: str, dataset, budgets, runtime: str) -> dict:
    """:func:`edgefp.adversarial.evaluate` of ``dataset`` on the RUN ``bundle`` was converted from, on ``runtime``."""
    from edgefp import adversarial
    from edgefp.isolation import step
    from edgefp.trainer.fingerprint import NeuralFingerprint, read_fingerprint_json

    if not bundle.fingerprinted:
        raise EdgefpError(
            f"{option('adversarial')} needs a bundle with a fingerprint; this one was wrapped without one"
        )
    source = bundle.manifest.source if isinstance(bundle.manifest.source, dict) else {}
    if read_fingerprint_json(run_dir)["classifier"]["sha256"] != source.get("classifier_sha256"):
        raise EdgefpError(
            f"{run_dir} is not the RUN the bundle was converted from (another classifier); "
            f"give {option('adversarial')} that RUN"
        )
    with step("attacking the float classifier (TensorFlow)"):
        fingerprint = NeuralFingerprint.load(run_dir)
        return adversarial.evaluate(
            fingerprint,
            dataset.x,
            dataset.y,
            bundle=bundle,
            runtimes=(runtime,),
            budgets=tuple(budgets) or adversarial.BUDGETS,
        )


@click.command(epilog="Example: edgefp demo --out demo-out/")
@click.option(
    "--out", default="demo-out", show_default=True, type=click.Path(), help="Directory for everything the demo writes."
)
@SEED_OPTION
@JSON_OPTION
def demo(out, seed, as_json):
    """The kit end to end on digits: train on 0-4 and fingerprint, convert to int8, then score held-out
    0-4, unseen 5-9 and corrupted digits with the float RUN and the int8 bundle."""
    from edgefp.demo import run_demo

    with ProgressBar(enabled=not as_json) as progress:
        report = run_demo(out, seed=seed, progress=progress)
    lines = [
        f"{'':22} {'':>5} {'accuracy':^17} {'flagged OOD':^17} {'AUROC':^15}",
        f"{'data':<22} {'n':>5} "
        + " ".join(f"{'float':>8} {'int8':>8}" for _ in range(2))
        + f" {'float':>7} {'int8':>7}",
    ]
    for row in report["rows"]:
        cells = [f"{percent(row[f'{m}_accuracy']):>8}" for m in ("float", "int8")]
        cells += [f"{percent(row[f'{m}_ood_rate']):>8}" for m in ("float", "int8")]
        cells += ["      -" if row[f"{m}_auroc"] is None else f"{row[f'{m}_auroc']:7.3f}" for m in ("float", "int8")]
        lines.append(f"{row['set']:<22} {row['n']:>5} " + " ".join(cells))
    parity = report["parity"]
    lines.append("AUROC: held-out 0-4 against each set, OOD as the positive class.")
    identical, same_pred = (
        percent(parity["runtime_identical"]).strip(),
        percent(parity["runtime_pred_agreement"]).strip(),
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
    emit(report, as_json, lines)


@click.group()
def keys():
    """Signing keys for bundles (docs/security.md)."""


@keys.command("generate", epilog="Example: edgefp keys generate --out ~/.edgefp/keys")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for signing.key and .pub.")
@click.option("--force", is_flag=True, help="Replace a key pair there (devices that trust it refuse new bundles).")
@JSON_OPTION
def keys_generate(out, force, as_json):
    """Make an Ed25519 key pair: OUT/signing.key signs bundles (keep it off devices, readable by you
    alone), OUT/signing.pub is what devices trust (agent --trust, export-firmware --trust)."""
    from edgefp.signing import generate_keys

    report = generate_keys(out, force=force)
    lines = [
        f"wrote {report['private_key']} (keep it secret) and {report['public_key']} (for devices)",
        f"  key id {report['key_id']}",
    ]
    emit(report, as_json, lines)


@click.command(epilog="Example: edgefp sign digits04.efp --key ~/.edgefp/keys/signing.key")
@click.argument("bundle", type=click.Path())
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="The signing.key to sign with.")
@click.option(
    "--version",
    "version",
    type=click.IntRange(1, (1 << 64) - 1),
    default=None,
    help="Version to sign as; devices refuse older ones [default: the time in seconds, past the bundle's last].",
)
@JSON_OPTION
def sign(bundle, key_path, version, as_json):
    """Sign a bundle in place (Ed25519 over its manifest and a version that only grows): devices that
    trust the key's signing.pub take it, and refuse unsigned, otherwise signed and older bundles."""
    from edgefp.signing import sign_bundle

    report = sign_bundle(bundle, key_path, version)
    line = f"signed {bundle} ({report['name']}): version {report['version']}, key id {report['key_id']}"
    emit(report, as_json, [line])


COMMANDS = [train, fingerprint, score, convert, wrap, inspect, export_c_command, bench, report, demo, keys, sign]
