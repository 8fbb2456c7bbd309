"""A fleet on a real broker, end to end: simulated agents and the C firmware (built for this machine)
behind a gateway, deployed to by tag with ``edgefp fleet deploy``, and healed by ``edgefp watch --broker``:
one selection per drifting site, its winner deployed to the whole site, the site that did not drift
left alone."""

import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from edgefp import data, shifts
from edgefp.firmware_host.device.fleet import Gateway
from edgefp.firmware_host.firmware.launch import start
from edgefp.firmware_host.link.client import open_device
from edgefp.firmware_host.link.mqtt import local_broker, mosquitto, parse_broker
from edgefp.fleet import Controller
from edgefp.repository import Repository
from tests.cli.test_cli import edgefp
from tests.device.test_fleet import members, wait_for

pytestmark = [
    pytest.mark.heavy,  # builds the firmware
    pytest.mark.skipif(
        not (shutil.which("gcc") and shutil.which("make") and mosquitto()),
        reason="needs gcc, make and mosquitto",
    ),
]  # fmt: skip


def feed(agent, x: np.ndarray, stop: threading.Event) -> None:
    """The agent's sensor: raw windows of ``x`` over and over at 50 Hz until ``stop``, from a thread."""

    def run():
        while not stop.is_set():
            for window in x:
                if stop.wait(0.02):
                    return
                agent.classify(window)

    threading.Thread(target=run, daemon=True).start()


def test_fleet_deployed_by_tag_and_healed_by_watch(digits_bundle, inverted_bundle, tmp_path):
    repo = Repository(str(tmp_path / "repo"))
    repo.add(digits_bundle[1], {"domain": "plain"})
    repo.add(inverted_bundle, {"domain": "inverted"})
    test04 = data.load("digits:test:0-4").x
    inverted = shifts.apply(test04, "invert")
    sites = {name: ("pi", {"site": name[:-2], "fleet": "demo"}) for name in ("north-1", "north-2", "west-1")}
    stop, events = threading.Event(), str(tmp_path / "fleet.jsonl")
    with local_broker() as url, members(url, tmp_path, sites) as agents, start("native") as chip:
        link = open_device(chip.url)
        gateway = Gateway(link, parse_broker(url), "south-chip", {"site": "south", "fleet": "demo"})
        serving = threading.Thread(target=gateway.run, args=(stop,), daemon=True)
        serving.start()
        try:
            with Controller(parse_broker(url)) as controller:
                wait_for(lambda: len(controller.devices()) == 4)
            deployed = edgefp("fleet", "deploy", digits_bundle[1], "--broker", url, "--where", "fleet=demo", "--json")
            assert deployed.returncode == 0, deployed.stderr
            results = {found["device_id"]: found["result"] for found in json.loads(deployed.stdout)["devices"]}
            assert results == dict.fromkeys(("north-1", "north-2", "south-chip", "west-1"), "deployed")
            assert all(agent.bundle.manifest.name == "digits04" for agent in agents.values())
            watch = [sys.executable, "-m", "edgefp", "watch", "--broker", url, "--repo", repo.root, "--json"]
            watch += ["--group-by", "site", "--window", "40", "--count", "2", "--events", events]
            watcher = subprocess.Popen(watch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                for name, x in (("north-1", inverted), ("north-2", inverted), ("west-1", test04)):
                    feed(agents[name], x, stop)
                chip.feed(inverted, 100)
                out, err = watcher.communicate(timeout=60)
            finally:
                if watcher.poll() is None:
                    watcher.kill()
                    watcher.wait()
            assert watcher.returncode == 0, err
            with Controller(parse_broker(url)) as controller:
                wait_for(lambda: len(controller.devices({"bundle": "digits04_inverted"})) == 3)
                bundles = {found["device_id"]: found["bundle"] for found in controller.devices()}
        finally:
            stop.set()
            serving.join(10)
            link.close()
    decisions = [json.loads(line) for line in out.splitlines()]
    assert decisions == [json.loads(line) for line in open(events)]
    by_group = {decision["group"]: decision for decision in decisions}
    assert set(by_group) == {"site=north", "site=south"}  # one selection per drifting site
    for decision in decisions:
        assert decision["decision"] == "deployed" and decision["model"] == "digits04_inverted", decision
        assert decision["active"] == "digits04" and decision["samples"] >= 8 and decision["ood_rate"] >= 0.3
    north = by_group["site=north"]
    assert {north["device"], *(found["device_id"] for found in north["group_deployed"])} == {"north-1", "north-2"}
    assert [found["result"] for found in north["group_deployed"]] == ["deployed"]
    assert by_group["site=south"]["device"] == "south-chip"
    assert bundles == {
        "north-1": "digits04_inverted",
        "north-2": "digits04_inverted",
        "south-chip": "digits04_inverted",
        "west-1": "digits04",
    }
