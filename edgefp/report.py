"""An offline HTML report of a bundle: its fingerprint, detection, accuracy, latency and board budget.

``build_report`` scores each data set once, draws PNG figures with matplotlib (Agg) and writes
``index.html`` last, next to them: one page with inline CSS, no script and no network.
"""

from __future__ import annotations

import html
import os

import numpy as np

from edgefp import metrics, ood
from edgefp.data import Dataset
from edgefp.errors import EdgefpError
from edgefp.fsutil import atomic_directory, check_directory_output
from edgefp.manifest import Manifest
from edgefp.ood import QUANTILE_LEVELS

EVIDENCE_TITLES = {"autoencoder": "autoencoder", "max_logit": "largest logit"}
EVIDENCE_UNITS = {"autoencoder": "reconstruction error", "max_logit": "largest logit (low is unusual)"}

REPORT_KIND = "report"
DPI = 90
ALARM = "#c00"
CSS = """body{font:15px/1.5 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;max-width:1100px;
margin:2em auto;padding:0 1em}h1{margin-bottom:0}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
.meta{color:#555;margin-top:.2em}.note{color:#666;font-size:.9em}img{max-width:100%}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}th,td{padding:.25em .7em;
border-bottom:1px solid #e4e4e4;text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f5f5f5}
.bad{color:#b00020;font-weight:bold}"""

FINGERPRINT_NOTE = (
    "Cumulative distribution of each layer's reconstruction error: the held-out in-distribution errors recorded in "
    "the bundle (black) against the given data. A curve right of the black one means larger errors than the model is "
    "used to. The red line is the layer's alarm level, the error at which that layer alone reaches the threshold; "
    "errors of 0 are drawn at the left edge. The last panel combines the layers into the OOD score."
)
ADVERSARIAL_NOTE = (
    "Adversarial copies of the in-distribution samples, made on the float classifier of the bundle's RUN: FGSM, "
    "PGD, and adaptive PGD that also lowers the fingerprint's OOD score (L-infinity; budget: share of each "
    "channel's value range), then run by this bundle. Success: share of its correct predictions turned wrong; "
    "undetected: share of them turned wrong and not flagged at the bundle's threshold; AUROC: clean against successful "
    "adversarial samples. The fingerprint flags inputs unlike its training data; an attacker who knows it can "
    "stay close enough to that data to pass."
)


def build_report(
    bundle,
    data: Dataset,
    ood_sets: list[Dataset],
    bench: list[dict],
    board: dict | None,
    out_dir: str,
    runtime: str = "litert",
    *,
    adversarial: dict | None = None,
    force: bool = False,
) -> str:
    """Write the report as the directory ``out_dir``, all at once (an existing report is replaced only
    with ``force``; a failure leaves nothing); return the path of index.html. ``adversarial``: the
    result of :func:`edgefp.adversarial.evaluate` with ``runtime`` among its runtimes, drawn as a panel."""
    try:
        import matplotlib
    except ImportError as exc:
        raise EdgefpError("the report needs matplotlib: pip install 'edgefp[report]'") from exc
    matplotlib.use("Agg")
    check_directory_output(out_dir, REPORT_KIND, force=force)
    sets = [(ds, bundle.score(ds.x, runtime)) for ds in [data, *ood_sets]]
    with atomic_directory(out_dir, REPORT_KIND, force=force) as tmp:
        _write_pages(tmp, bundle, sets, bench, board, runtime, adversarial)
    return os.path.join(out_dir, "index.html")


def _write_pages(
    out_dir: str, bundle, sets: list, bench: list[dict], board: dict | None, runtime: str, adversarial: dict | None
) -> None:
    """The figures and index.html of a report into ``out_dir``."""
    manifest, data, ood_sets = bundle.manifest, sets[0][0], [ds for ds, _ in sets[1:]]
    name = html.escape(data.name)
    body = [_header(manifest, runtime), _summary(bundle, sets)]

    def add(png, fig, title, note, extra=""):
        _save(fig, os.path.join(out_dir, png))
        body.append(f'<h2>{title}</h2><p class="note">{note}</p><img src="{png}" alt="{title}">{extra}')

    if bundle.fingerprinted:
        add("fingerprint.png", _fingerprint_figure(bundle, sets), "Fingerprint", FINGERPRINT_NOTE)
    if ood_sets and bundle.fingerprinted:
        add("roc.png", _roc_figure(sets), "Detection (ROC)", f"{name} against each OOD set, OOD as the positive class.")
    matrix = _confusion(bundle, data, sets[0][1]) if bundle.fingerprinted else None
    if matrix is not None:
        note = f"The {int(matrix.sum())} samples of {name} whose class the model knows."
        add("confusion.png", _confusion_figure(bundle, matrix), "Confusion matrix", note)
    if adversarial:
        table = _adversarial_table(adversarial, runtime)
        add("adversarial.png", _adversarial_figure(adversarial, runtime), "Adversarial inputs", ADVERSARIAL_NOTE, table)
    if bench:
        note = "Latency of every timed inference of each benchmark, median (p50) and p99 marked."
        add("latency.png", _latency_figure(bench), "Latency", note, _bench_table(bench))
    if board and _budget_rows(manifest, board):
        rows, title = _budget_rows(manifest, board), f"Board budget: {html.escape(str(board.get('name', '')))}"
        note = html.escape(str(board.get("description", "")))
        add("budget.png", _budget_figure(rows, board), title, note, _budget_table(rows))
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>edgefp report: '
        f"{html.escape(manifest.name)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as out:
        out.write(page)


# ------------------------------------------------------------------------------------------ html
def _table(head: list[str], rows: list[list]) -> str:
    """An HTML table; a cell given as (text, css_class) gets that class. Everything is escaped."""

    def cell(c):
        text, cls = c if isinstance(c, tuple) else (c, "")
        return f'<td class="{cls}">{html.escape(str(text))}</td>' if cls else f"<td>{html.escape(str(text))}</td>"

    lines = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{lines}</table>"


def _header(manifest: Manifest, runtime: str) -> str:
    score, names = manifest.score, ", ".join(label.name for label in manifest.labels)
    outputs = ", ".join(f"{spec.shape} {spec.dtype}" for spec in manifest.outputs.raw)
    lines = [
        f"input {manifest.input.shape} {manifest.input.dtype} · {len(manifest.labels)} classes: {names}"
        if score
        else f"input {manifest.input.shape} {manifest.input.dtype} · outputs {outputs}",
        f"OOD threshold {score.threshold:.3f} at target false-positive rate {score.target_fpr:.1%} · "
        f"{len(manifest.layers)} fingerprinted layers · scored with {runtime}"
        if score
        else f"no fingerprint (wrapped from {manifest.wrapped_from}): no OOD check · run with {runtime}",
        f"model {manifest.flash_bytes:,} B · TFLite Micro arena {manifest.tflm_arena_bytes:,} B · "
        f"edgefp {manifest.edgefp_version or '?'} · created {manifest.created or '?'}",
    ]
    meta = "<br>".join(html.escape(line) for line in lines)
    return f'<h1>{html.escape(manifest.name)}</h1><p class="meta">{meta}</p>'


def _summary(bundle, sets: list) -> str:
    if not bundle.fingerprinted:  # raw outputs: the share of each data set's most frequent argmax
        rows = []
        for ds, outputs in sets:
            counts = np.bincount(outputs.pred)
            rows.append([ds.name, len(ds), int(np.argmax(counts)), f"{counts.max() / len(ds):.1%}"])
        return f"<h2>Summary</h2>{_table(['data', 'samples', 'most frequent argmax', 'share'], rows)}"
    rows = []
    for i, (ds, scores) in enumerate(sets):
        summary = scores.summary(ds.y, bundle.label_values)
        accuracy = "—" if summary["accuracy"] is None else f"{summary['accuracy']:.1%}"
        auroc = f"{metrics.auroc(sets[0][1].ood_score, scores.ood_score):.3f}" if i else "—"
        rows.append(
            [ds.name, "OOD" if i else "in-distribution", len(ds), accuracy, f"{summary['ood_rate']:.1%}", auroc]
        )
    head = ["data", "role", "samples", "accuracy", "flagged OOD", "AUROC vs in-distribution"]
    return f"<h2>Summary</h2>{_table(head, rows)}"


def _bench_label(b: dict) -> str:
    target = b.get("target", {})
    return str(target.get("label") or f"{target.get('kind', '')} {target.get('runtime', '')}".strip())


def _bench_table(bench: list[dict]) -> str:
    head = "target|runtime|runs|init ms|first µs|mean µs|p50 µs|p90 µs|p99 µs|max µs|per second|model B|arena B"
    rows = [
        [
            _bench_label(b),
            b["target"].get("runtime", ""),
            b["runs"],
            f"{b['init_ms']:.1f}",
            f"{b['first_inference_us']:.1f}",
            *(f"{b['latency_us'][k]:.1f}" for k in ("mean", "p50", "p90", "p99", "max")),
            f"{b['throughput_per_s']:,.0f}",
            f"{b['model_bytes']:,}",
            "—" if b.get("arena_bytes") is None else f"{b['arena_bytes']:,}",
        ]
        for b in bench
    ]
    return _table(head.split("|"), rows)


def _adversarial_table(result: dict, runtime: str) -> str:
    rows = []
    for kind, attacks in result["attacks"].items():
        for row in attacks:
            device = row["runtimes"][runtime]
            auroc = "—" if device["auroc"] is None else f"{device['auroc']:.3f}"
            cells = [f"{row['success']:.1%}", f"{device['success']:.1%}", f"{device['undetected_at_threshold']:.1%}"]
            rows.append([kind, f"{row['budget']:g}", *cells, auroc])
    head = ["attack", "budget", "success (float)", f"success ({runtime})", f"undetected ({runtime})", "AUROC"]
    return _table(head, rows)


def _budget_rows(manifest: Manifest, board: dict) -> list[tuple[str, int, int]]:
    """(what, used, available) for the model in flash and the TFLM arena in RAM, where the board gives both."""
    pairs = [
        ("model in flash", manifest.flash_bytes, "flash_bytes"),
        ("TFLM arena in RAM", manifest.tflm_arena_bytes, "ram_bytes"),
    ]
    return [(what, used, int(board[b])) for what, used, b in pairs if used and board.get(b)]


def _budget_table(rows: list) -> str:
    cells = [
        [
            what,
            f"{used:,}",
            f"{total:,}",
            f"{used / total:.1%}",
            ("fits", "") if used <= total else ("does not fit", "bad"),
        ]
        for what, used, total in rows
    ]
    return _table(["resource", "used (bytes)", "available (bytes)", "share", ""], cells)


# ------------------------------------------------------------------------------------------ files
def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=DPI, format="png")
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------ figures
def _steps(ax, x, levels, **style) -> None:
    ax.plot(x, levels, drawstyle="steps-post", **style)


def _ecdf(ax, values, **style) -> None:
    values = np.sort(np.asarray(values, dtype=np.float64))
    _steps(ax, np.r_[values[0], values], np.arange(len(values) + 1) / len(values), **style)


def _mark(ax, x: float, text: str) -> None:
    ax.axvline(x, color=ALARM, ls="--", lw=1.2, label="alarm level (threshold)")
    ax.annotate(
        text,
        (x, 0.03),
        xytext=(3, 0),
        textcoords="offset points",
        color=ALARM,
        fontsize=8,
        rotation=90,
        va="bottom",
        xycoords=("data", "axes fraction"),
    )


def _fingerprint_figure(bundle, sets: list):
    import matplotlib.pyplot as plt

    layers, score = bundle.manifest.layers, bundle.manifest.score
    ncols = min(3, len(layers) + 1)
    nrows = -(-(len(layers) + 1) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.1 * nrows + 0.4), squeeze=False, layout="constrained"
    )
    axes = axes.ravel()
    for j, layer in enumerate(layers):
        ax, reference = axes[j], np.asarray(layer.holdout_quantiles, dtype=np.float64)
        log = layer.transform == "log"
        every = np.concatenate([reference, *(s.layer_errors[:, j] for _, s in sets)])
        floor = (every[every > 0].min() / 2 if (every > 0).any() else 1e-4) if log else -np.inf
        _steps(ax, np.maximum(reference, floor), QUANTILE_LEVELS, color="k", lw=2.2, label="fingerprint (held-out)")
        for i, (ds, s) in enumerate(sets):
            _ecdf(ax, np.maximum(s.layer_errors[:, j], floor), color=f"C{i}", lw=1.3, label=ds.name)
        alarm = ood.inverse_transform(layer.z_mean + score.threshold * layer.z_std, layer.transform)
        _mark(ax, alarm, f"alarm {alarm:.3g}")
        ax.set(
            xscale="log" if log else "linear",
            title=f"{layer.name}: {EVIDENCE_TITLES[layer.kind]}",
            xlabel=EVIDENCE_UNITS[layer.kind],
        )
    ax = axes[len(layers)]
    _steps(ax, score.holdout_quantiles, QUANTILE_LEVELS, color="k", lw=2.2)
    for i, (_, s) in enumerate(sets):
        _ecdf(ax, s.ood_score, color=f"C{i}", lw=1.3)
    _mark(ax, score.threshold, f"threshold {score.threshold:.2f}")
    ax.set(title="combined OOD score", xlabel="score (mean of positive z)")
    for k, ax in enumerate(axes):
        ax.set(ylim=(0, 1.02), ylabel="share of samples ≤ x" if k % ncols == 0 else None)
        ax.grid(alpha=0.25)
        if k > len(layers):
            ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    if len(axes) > len(layers) + 1:  # a free panel holds the legend
        axes[len(layers) + 1].legend(handles, labels, loc="center", fontsize=9, frameon=False)
    else:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=9, frameon=False)
    return fig


def _roc_figure(sets: list):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.6), layout="constrained")
    id_scores = sets[0][1].ood_score
    for i, (ds, s) in enumerate(sets[1:], start=1):
        cuts = np.r_[np.inf, np.unique(np.r_[id_scores, s.ood_score])[::-1]]
        fpr, tpr = _share_at_or_above(id_scores, cuts), _share_at_or_above(s.ood_score, cuts)
        ax.plot(fpr, tpr, color=f"C{i}", lw=1.6, label=f"{ds.name} (AUROC {metrics.auroc(id_scores, s.ood_score):.3f})")
    ax.plot([0, 1], [0, 1], color="#999", ls=":", lw=1)
    ax.set(
        xlabel="false-positive rate (in-distribution flagged)",
        ylabel="true-positive rate (OOD flagged)",
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        aspect="equal",
    )
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _share_at_or_above(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    return 1.0 - np.searchsorted(np.sort(values), cuts, side="left") / len(values)


def _confusion(bundle, data: Dataset, scores) -> np.ndarray | None:
    """Counts (true, predicted) over the samples whose label is one of the model's; None without such labels."""
    values = bundle.label_values
    known = np.zeros(len(data), bool) if data.y is None else np.isin(data.y, values)
    if not known.any():
        return None
    index = {int(value): k for k, value in enumerate(values)}
    matrix = np.zeros((len(values), len(values)), dtype=np.int64)
    for true, pred in zip(data.y[known], scores.pred[known]):
        matrix[index[int(true)], index[int(pred)]] += 1
    return matrix


def _confusion_figure(bundle, matrix: np.ndarray):
    import matplotlib.pyplot as plt

    names = [label.name for label in bundle.manifest.labels]
    size = min(10.0, 2.6 + 0.45 * len(names))
    fig, ax = plt.subplots(figsize=(size + 1, size), layout="constrained")
    fig.colorbar(ax.imshow(matrix, cmap="Blues"), ax=ax, shrink=0.8, label="samples")
    ticks = np.arange(len(names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=names, yticklabels=names, xlabel="predicted", ylabel="true")
    if len(names) > 8:
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    if len(names) <= 20:
        for (r, c), count in np.ndenumerate(matrix):
            color = "white" if count > matrix.max() / 2 else "black"
            ax.text(c, r, str(count), ha="center", va="center", color=color, fontsize=9)
    return fig


def _latency_figure(bench: list[dict]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(bench), 1, figsize=(8, 2.2 * len(bench) + 0.5), squeeze=False, layout="constrained")
    for i, (ax, b) in enumerate(zip(axes[:, 0], bench)):
        samples, lat = np.asarray(b["samples_us"], dtype=np.float64), b["latency_us"]
        ax.hist(samples, bins=min(60, max(10, len(samples) // 10)), color=f"C{i}", alpha=0.75)
        ax.axvline(lat["p50"], color="k", lw=1.3, label=f"p50 {lat['p50']:.1f} µs")
        ax.axvline(lat["p99"], color=ALARM, ls="--", lw=1.3, label=f"p99 {lat['p99']:.1f} µs")
        ax.set(title=f"{_bench_label(b)} ({b['runs']} runs)", ylabel="runs")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes[-1, 0].set_xlabel("latency per inference (µs)")
    return fig


def _adversarial_figure(result: dict, runtime: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for i, (kind, attacks) in enumerate(result["attacks"].items()):
        budgets = [row["budget"] for row in attacks]
        devices = [row["runtimes"][runtime] for row in attacks]
        ax.plot(budgets, [d["success"] for d in devices], "o-", color=f"C{i}", label=f"{kind}: success")
        undetected = [d["undetected_at_threshold"] for d in devices]
        ax.plot(budgets, undetected, "s--", color=f"C{i}", label=f"{kind}: undetected")
    ax.set(xlabel="budget (share of each channel's range)", ylabel=f"share of correct predictions ({runtime})")
    ax.set(ylim=(-0.02, 1.02))
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def _budget_figure(rows: list, board: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.7 * len(rows) + 1.1), layout="constrained")
    shares = [100.0 * used / total for _, used, total in rows]
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [100.0] * len(rows), color="#eee", edgecolor="#bbb", height=0.6)
    ax.barh(y, shares, color=[ALARM if share > 100 else "C0" for share in shares], height=0.6)
    ax.axvline(100.0, color="#555", lw=1)
    right = ax.secondary_yaxis("right")
    texts = [f"{used:,} of {total:,} B ({share:.1f} %)" for (_, used, total), share in zip(rows, shares)]
    right.set_yticks(y, [t + ("\nDOES NOT FIT" if share > 100 else "") for t, share in zip(texts, shares)])
    right.tick_params(length=0)
    for label, share in zip(right.get_yticklabels(), shares):
        label.set(color=ALARM if share > 100 else "#222", fontweight="bold" if share > 100 else "normal")
    ax.set(yticks=y, yticklabels=[r[0] for r in rows], xlim=(0, max(105.0, 1.05 * max(shares))))
    ax.set_xlabel(f"share of the {board.get('name', 'board')} budget")
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0f} %")
    return fig
