"""Commands of the drift loop around a model repository: repo, select, watch, and review (a human
labels what the device flagged)."""

from __future__ import annotations

import json
import sys

import click

from edgefp.cli.common import (
    BROKER_CA_OPTION,
    BROKER_OPTION,
    JSON_OPTION,
    KEY_OPTION,
    REPO_OPTION,
    WHERE_OPTION,
    FloatRange,
    broker,
    emit,
    lines_wanted,
    open_device,
    percent,
    read_key,
    warn,
)
from edgefp.errors import EdgefpError


def _repository(path: str | None):
    from edgefp.repository import Repository

    return Repository(path)


@click.group()
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
        bundle, parse_pairs(tags, "tag"), name=name, force=force, parent=parent, data_added=data_added
    )
    report = {"repo": repository.root, **entry.as_dict()}
    shape = "x".join(str(n) for n in entry.input_shape)
    lines = [f"added {entry.name} ({shape}, {len(entry.labels)} labels) to {repository.root}"]
    if entry.lineage:
        added = ", ".join(f"{item['data']} ({item['samples']} samples)" for item in entry.lineage["data_added"])
        lines.append(f"  retrained from {entry.parent or '-'} with {added or 'no data recorded'}")
    emit(report, as_json, lines)


@repo.command("list", epilog="Example: edgefp repo list --where task=digits")
@WHERE_OPTION
@REPO_OPTION
@JSON_OPTION
def repo_list(where, repo, as_json):
    """The bundles in the repository, with their input shape, labels and tags."""
    from edgefp.repository import parse_pairs

    repository = _repository(repo)
    entries = repository.entries(parse_pairs(where, "where"))
    lines = [f"{'name':20} {'input':10} {'labels':>6} {'created':26} {'parent':16} tags"]
    for entry in entries:
        tags = " ".join(f"{key}={value}" for key, value in entry.tags.items())
        shape = "x".join(str(n) for n in entry.input_shape)
        row = f"{entry.name:20} {shape:10} {len(entry.labels):>6} {entry.created or '-':26} {entry.parent or '-':16}"
        lines.append(f"{row} {tags}")
    if not entries:
        lines = [f"no bundles in {repository.root}" + (" match --where" if where else "")]
    emit({"repo": repository.root, "bundles": [entry.as_dict() for entry in entries]}, as_json, lines)


@repo.command("remove", epilog="Example: edgefp repo remove digits04")
@click.argument("name")
@REPO_OPTION
@JSON_OPTION
def repo_remove(name, repo, as_json):
    """Take a bundle out of the repository and delete its files."""
    repository = _repository(repo)
    entry = repository.remove(name)
    emit({"repo": repository.root, "removed": entry.name}, as_json, [f"removed {entry.name} from {repository.root}"])


@repo.command("reindex", epilog="Example: edgefp repo reindex --repo models/")
@REPO_OPTION
@JSON_OPTION
def repo_reindex(repo, as_json):
    """Rebuild the index from the stored bundles, skipping (with a warning) any that do not verify."""
    repository = _repository(repo)
    entries, notes = repository.reindex()
    for note in notes:
        warn(note)
    report = {"repo": repository.root, "bundles": [entry.name for entry in entries], "warnings": notes}
    emit(report, as_json, [f"indexed {len(entries)} bundles in {repository.root}"])


@click.command("select", epilog="Example: edgefp select --repo models/ --data node7.npz --where task=digits --top 3")
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
    report = select(repository, load(data).x, where=parse_pairs(where, "where"))
    for skipped in report["skipped"]:
        warn(f"skipped {skipped['name']}: {skipped['reason']}")
    report["data"] = data
    report["candidates"] = report["candidates"][:top]
    lines = [
        f"{data}: {report['n']} samples against {repository.root}",
        f"{'rank':>4} {'name':20} {'match':>7} {'flagged OOD':>11} {'tolerated':>9}  fits",
    ]
    for rank, found in enumerate(report["candidates"], 1):
        lines.append(
            f"{rank:>4} {found['name']:20} {found['match_score']:7.2f} {percent(found['ood_share']):>11} "
            f"{percent(found['ood_tolerance']):>9}  {'yes' if found['fits'] else 'no'}"
        )
    lines.append("match: largest per-layer KS distance / its critical value (<= 1 fits)")
    if report["selected"]:
        lines.append(f"selected: {report['selected']}")
    else:
        lines.append(f"verdict: {report['verdict']}: even the best candidate does not match; a human should review")
    report["deployed"] = None
    if deploy and report["selected"]:
        from edgefp.selection import deploy as deploy_bundle

        with open_device(deploy, key_file) as device:
            flashed = deploy_bundle(repository, report["selected"], device)
        report["deployed"] = {"port": deploy, **{key: flashed[key] for key in ("name", "bytes", "skipped")}}
        state = "already active there" if flashed["skipped"] else "flashed, verified and active"
        lines.append(f"deployed {report['selected']} to {deploy}: {state}")
    elif deploy:
        lines.append(f"nothing deployed to {deploy}")
    emit(report, as_json, lines)


@click.command(
    epilog="Example: edgefp watch --port /dev/ttyACM0 --repo models/ --ood-rate 0.3 --events drift.jsonl\n\n"
    "Example: edgefp watch --broker mqtt://127.0.0.1:1883 --repo models/ --group-by site"
)
@click.option("--port", default=None, envvar="EDGEFP_PORT", help="The device's URL (as for flash) [env EDGEFP_PORT].")
@BROKER_OPTION
@BROKER_CA_OPTION
@REPO_OPTION
@click.option(
    "--ood-rate", type=FloatRange(0, 1, min_open=True), default=0.3, show_default=True, help="Act at this rate."
)
@click.option(
    "--window", type=click.IntRange(1), default=None, help="Inputs the rate is over [default: device's; fleet 100]."
)
@click.option("--interval", type=FloatRange(0), default=1.0, show_default=True, help="Seconds between polls (--port).")
@click.option("--group-by", default=None, help="With --broker: one decision per group of devices with this tag.")
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
def watch(
    port, broker_url, broker_ca, repo, ood_rate, window, interval, group_by, events_path, where, once, count, key_file,
    as_json,
):  # fmt: skip
    """The drift loop: follow the device's OOD rate; when it reaches --ood-rate, run selection on the
    device's recent OOD samples, flash the model that matches, or else raise a human-review alert.
    With --broker, the same for every device of an MQTT fleet (docs/fleet.md), from their OOD events:
    per device, or per group of devices sharing a tag (--group-by), one decision per drift."""
    from edgefp.repository import parse_pairs
    from edgefp.watch import DEPLOYED, NO_MATCH, watch_url

    if (port is None) == (broker_url is None):
        raise EdgefpError("give one of --port URL (one device) and --broker URL (a fleet)")
    repository = _repository(repo)
    repository.entries()  # a missing repository fails now, not at the first drift
    lines_out = lines_wanted(as_json)

    def on_decision(event: dict) -> None:
        for skipped in event.get("skipped", []):
            warn(f"skipped {skipped['name']}: {skipped['reason']}")
        if lines_out:
            click.echo(json.dumps(event))
            return
        head = f"{event['time'][11:19]}  {event['device']}: OOD rate {percent(event['ood_rate']).strip()}"
        scores = ", ".join(f"{c['name']} {c['match_score']:.2f}" for c in event.get("candidates", []))
        head += f" over {event['window']} inputs, {event.get('samples', 0)} samples pulled; match: {scores or '-'}"
        if event["decision"] == DEPLOYED:
            others = [result["device_id"] for result in event.get("group_deployed", [])]
            also = f"; also to {', '.join(others)}" if others else ""
            click.echo(f"{head}\n  deployed {event['model']} (was {event['active']}){also}")
        elif event["decision"] == NO_MATCH:
            reason = event.get("reason") or "no model of the repository matches the drifted data"
            alert = f"  HUMAN REVIEW: {reason}; {event['active']} stays active (events in {events_path})"
            click.echo(f"{head}\n" + click.style(alert, fg="red", bold=True))
        elif event["decision"] == "failed":
            click.echo(f"{head}\n  no decision: {event['reason']}")
        else:
            click.echo(f"{head}\n  {event['active']} is already the best model")

    decisions = 1 if once else count
    if broker_url is not None:
        from edgefp.fleet import FleetWatch

        options = {"ood_rate": ood_rate, "window": window or 100, "group_by": group_by, "events_path": events_path}
        options.update(on_decision=on_decision, key=read_key(key_file))
        where_to = broker(broker_url, broker_ca)
        fleet = FleetWatch(where_to, repository, where=parse_pairs(where, "where"), **options)
        if not lines_out:
            rate = percent(ood_rate).strip()
            click.echo(f"watching the fleet on {where_to.url}: acting at OOD rate {rate}; Ctrl-C stops")
        try:
            fleet.run(decisions=decisions)
        finally:
            fleet.close()
        return
    if group_by:
        raise EdgefpError("--group-by groups the devices of a fleet: give --broker, not --port")
    if not lines_out:
        click.echo(f"watching {port}: acting at OOD rate {percent(ood_rate).strip()}; Ctrl-C stops")
    watch_url(
        port,
        repository,
        key=read_key(key_file),
        on_decision=on_decision,
        ood_rate=ood_rate,
        window=window,
        interval=interval,
        events_path=events_path,
        where=parse_pairs(where, "where"),
        decisions=decisions,
    )


@click.command(epilog="Example: edgefp review field.npz --bundle digits04/ --reference digits:train:0-4")
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

        with open_device(port, key_file) as device:
            options["manifest"] = manifest(device)
    if reference:
        from edgefp.data import load

        options["reference"] = load(reference)
    session = Review(data_path, labels_path=labels_path, export_path=export_path, force=force, **options)
    if export_path:
        report = session.export()
        classes = ", ".join(f"{name} {n}" for name, n in report["classes"].items())
        return emit(report, as_json, [f"wrote {report['out']}: {report['samples']} samples ({classes})"])
    server = ReviewServer(session, http_port)
    click.echo(server.url)
    state = session.state()
    details = {"url": server.url, "queued": state["queued"], "labels": state["labels_file"], "export": state["export"]}
    lines = [
        f"{state['queued']} of {state['samples']} samples to review; labels saved to {state['labels_file']}, "
        f"the page's export writes {state['export']}; Ctrl-C stops"
    ]
    emit(details, as_json, lines)
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.close()


COMMANDS = [repo, select_command, watch, review]
