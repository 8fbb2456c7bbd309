"""Commands of an MQTT fleet (docs/fleet.md): fleet status, fleet deploy, and gateway (a device on a
serial line joins the fleet). ``agent --broker`` and ``watch --broker`` live with their own commands."""

from __future__ import annotations

import socket
import sys
import time

import click

from edgefp.cli.common import (
    BROKER_CA_OPTION,
    BROKER_OPTION,
    JSON_OPTION,
    KEY_OPTION,
    SOME_FAILED,
    broker,
    emit,
    percent,
    read_key,
)

FLEET_WHERE = click.option(
    "--where", multiple=True, help="Only devices with this tag (or device_id=ID, bundle=NAME), KEY=VALUE; repeatable."
)
TAG_OPTION = click.option("--tag", "tags", multiple=True, help="A tag of this device, KEY=VALUE; repeatable.")


@click.group(epilog="Example: edgefp fleet status --broker mqtt://127.0.0.1:1883 --where site=lab")
def fleet():
    """The devices on an MQTT broker: their status, and deploying a bundle to those with given tags."""


@fleet.command(epilog="Example: edgefp fleet status --broker mqtt://127.0.0.1:1883 --where site=lab --json")
@BROKER_OPTION
@BROKER_CA_OPTION
@FLEET_WHERE
@JSON_OPTION
def status(broker_url, broker_ca, where, as_json):
    """A table of the devices the broker knows (their retained status): online, bundle, OOD rate over
    their window, last OOD event; with --json a list of objects."""
    from edgefp.fleet import Controller
    from edgefp.repository import parse_pairs

    wanted = parse_pairs(where, "where")
    with Controller(broker(broker_url, broker_ca)) as controller:
        controller.settle()
        devices = controller.devices(wanted)
    if as_json:
        emit(devices, True, [])
        return
    lines = [f"{'DEVICE':<20} {'ONLINE':<6} {'BUNDLE':<24} {'OOD RATE':>8}  {'LAST EVENT':<10}  TAGS"]
    for found in devices:
        last = found.get("last_event")
        age = f"{time.time() - last:.0f} s ago" if last else "-"
        tags = " ".join(f"{key}={value}" for key, value in found["tags"].items())
        online = "yes" if found["online"] else "no"
        lines.append(
            f"{found['device_id']:<20} {online:<6} {found['bundle'] or '-':<24} "
            f"{percent(found.get('ood_rate')):>8}  {age:<10}  {tags}"
        )
    lines.append(f"{len(devices)} devices, {sum(found['online'] for found in devices)} online")
    emit(devices, False, lines)


@fleet.command(epilog="Example: edgefp fleet deploy digits04.efp --broker mqtt://127.0.0.1:1883 --where site=lab")
@click.argument("bundle", type=click.Path())
@BROKER_OPTION
@BROKER_CA_OPTION
@click.option("--where", multiple=True, required=True, help="Devices with this tag (or device_id=ID), KEY=VALUE.")
@KEY_OPTION
@JSON_OPTION
def deploy(bundle, broker_url, broker_ca, where, key_file, as_json):
    """Send a bundle through the broker to every online device whose tags match, all at once: each
    verifies it, writes it to its inactive slot and activates it (or refuses it and keeps its bundle).
    One line per device as it finishes, then a summary; exit status 1 when any device did not end
    with the bundle active."""
    from edgefp import fleet as fleet_module
    from edgefp.bundle import Bundle
    from edgefp.repository import parse_pairs

    archive = Bundle.load(bundle).archive_bytes()
    wanted = parse_pairs(where, "where")
    start = time.monotonic()
    with fleet_module.Controller(broker(broker_url, broker_ca), key=read_key(key_file)) as controller:
        controller.settle()

        def on_result(result: dict) -> None:
            if not as_json:
                detail = f" ({result['error']})" if result.get("error") else ""
                click.echo(f"{result['device_id']}: {result['result']}{detail} in {result['seconds']:.2f} s")

        results = fleet_module.deploy(controller, archive, wanted, on_result=on_result)
    good = {fleet_module.DEPLOYED, fleet_module.ALREADY_ACTIVE}
    failed = [result for result in results if result["result"] not in good]
    report = {"bundle": bundle, "bytes": len(archive), "seconds": time.monotonic() - start, "devices": results}
    lines = [f"{'DEVICE':<20} {'RESULT':<16} {'SECONDS':>8}  MESSAGE"]
    for result in results:
        message = result.get("message", "").replace("\n", " ")[:70]
        lines.append(f"{result['device_id']:<20} {result['result']:<16} {result['seconds']:>8.2f}  {message}")
    lines.append(f"{len(results) - len(failed)} of {len(results)} devices run {bundle} ({report['seconds']:.1f} s)")
    emit(report, as_json, lines)
    if failed:
        sys.exit(SOME_FAILED)


@click.command(epilog="Example: edgefp gateway --port /dev/ttyACM0 --broker mqtt://192.168.1.2:1883 --tag site=lab")
@click.option("--port", required=True, help="The device's URL: a serial port (/dev/ttyACM0, COM3) or a pty path.")
@BROKER_OPTION
@BROKER_CA_OPTION
@click.option("--device-id", default=None, help="The device's id in the fleet [default: HOST-PORTNAME].")
@TAG_OPTION
def gateway(port, broker_url, broker_ca, device_id, tags):
    """Put a device on a serial line (the C firmware on a board, under QEMU or built for this machine)
    on an MQTT broker: its status and OOD events are published, and controllers reach it through the
    broker (fleet deploy, watch --broker) as over the cable. Runs until stopped; when the link drops the
    device is offline until it answers again."""
    from edgefp.cli.device import _until_signalled
    from edgefp.firmware_host.device.fleet import serve_gateway
    from edgefp.firmware_host.link.mqtt import check_device_id
    from edgefp.repository import parse_pairs

    where_to, device_id = broker(broker_url, broker_ca), check_device_id(device_id or default_id(port))
    click.echo(f"{device_id} on {where_to.url}", err=True)
    _until_signalled(serve_gateway, port, where_to, device_id, parse_pairs(tags, "tag"))


def default_id(port: str | None = None) -> str:
    """This machine's name, and the port's last part when given: a device id unique on one broker."""
    name = socket.gethostname().split(".")[0] or "edgefp"
    if port:
        name += "-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in port.rstrip("/").rsplit("/", 1)[-1])
    return name


COMMANDS = [fleet, gateway]
