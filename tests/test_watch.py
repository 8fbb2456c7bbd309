"""The drift loop against an in-process agent: deploy the matching model, or alert a human (fixed seeds)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgefp import data, shifts
from edgefp.bundle import Bundle
from edgefp.data import to_raw
from edgefp.firmware_host.device.agent import Agent, serving
from edgefp.firmware_host.firmware.launch import can_emulate, start
from edgefp.firmware_host.link import client
from edgefp.repository import Repository
from edgefp.watch import DEPLOYED, NO_MATCH, watch
from tests.cli.test_cli import edgefp


@pytest.fixture(scope="module")
def repo(digits_bundle, inverted_bundle, tmp_path_factory):
    """digits 0-4 and digits 0-4 inverted (the session bundles)."""
    repository = Repository(str(tmp_path_factory.mktemp("watch") / "repo"))
    repository.add(digits_bundle[1], {"domain": "plain"})
    repository.add(inverted_bundle, {"domain": "inverted"})
    return repository


@pytest.fixture
def device(digits_bundle, tmp_path):
    """A 'pi' agent on TCP with the digits 0-4 bundle active; yields (agent, open Device, bundle)."""
    agent = Agent(str(tmp_path / "agent"), "pi")
    bundle = Bundle.load(digits_bundle[1])
    with serving(agent, "tcp") as url, client.open_device(url) as device:
        client.flash(device, bundle.archive_bytes())
        yield agent, device, bundle


def _feed(agent, bundle, x):
    for sample in bundle.quantize(x):
        agent.observe(sample)


def test_to_raw_inverts_quantize(digits_bundle):
    bundle = Bundle.load(digits_bundle[1])
    x = data.load("digits:test:0-4").x[:20]
    back = to_raw(bundle.quantize(x), bundle.manifest.input)
    np.testing.assert_array_equal(bundle.quantize(back), bundle.quantize(x))


def test_drift_deploys_the_inverted_model(repo, device, tmp_path):
    agent, dev, bundle = device
    test04 = data.load("digits:test:0-4").x
    rng = np.random.default_rng(0)
    _feed(agent, bundle, test04[rng.choice(len(test04), 60, replace=False)])
    events = str(tmp_path / "events.jsonl")
    assert watch(dev, repo, ood_rate=0.3, window=50, events_path=events, polls=2, sleep=lambda s: None) == []
    _feed(agent, bundle, shifts.apply(test04[rng.choice(len(test04), 60, replace=False)], "invert"))
    made = watch(dev, repo, ood_rate=0.3, window=50, events_path=events, polls=3, sleep=lambda s: None)
    assert [event["decision"] for event in made] == [DEPLOYED] and made[0]["model"] == "digits04_inverted"
    assert agent.bundle.manifest.name == "digits04_inverted"
    logged = [json.loads(line) for line in open(events)]
    assert logged == made
    event = logged[0]
    assert event["device"] == dev.url and event["ood_rate"] >= 0.3 and event["samples"] >= 8 and event["time"]
    assert event["candidates"][0]["name"] == "digits04_inverted" and event["candidates"][0]["fits"]
    assert not event["candidates"][1]["fits"]


def test_noise_raises_a_human_review_alert(repo, device, tmp_path):
    agent, dev, bundle = device
    noise = np.clip(np.random.default_rng(0).normal(0.3, 0.3, (60, 8, 8)), 0, 1).astype(np.float32)
    _feed(agent, bundle, noise)
    events = str(tmp_path / "events.jsonl")
    made = watch(dev, repo, ood_rate=0.3, window=50, events_path=events, polls=3, sleep=lambda s: None)
    assert [event["decision"] for event in made] == [NO_MATCH] and "model" not in made[0]
    assert [json.loads(line) for line in open(events)] == made
    assert agent.bundle.manifest.name == bundle.manifest.name  # nothing flashed
    assert len(made[0]["candidates"]) == 2 and not any(c["fits"] for c in made[0]["candidates"])


@pytest.mark.skipif(not all(shutil.which(tool) for tool in ("gcc", "make")), reason="needs gcc and make")
def test_drift_on_the_c_firmware_deploys_the_inverted_model(repo, digits_bundle):
    """The same loop against the microcontroller firmware (built for this machine): the OOD samples come
    from its own buffer of 16, and the new model goes over its UART protocol."""
    bundle = Bundle.load(digits_bundle[1])
    test04 = data.load("digits:test:0-4").x
    drifted = shifts.apply(test04[np.random.default_rng(0).choice(len(test04), 60, replace=False)], "invert")
    with start("native") as chip, client.open_device(chip.url) as dev:
        client.flash(dev, bundle.archive_bytes())
        for sample in bundle.quantize(drifted):
            client.infer(dev, sample)
        made = watch(dev, repo, ood_rate=0.3, window=50, polls=3, sleep=lambda s: None)
        assert [event["decision"] for event in made] == [DEPLOYED] and made[0]["model"] == "digits04_inverted"
        assert made[0]["samples"] == 16 and client.manifest(dev).name == "digits04_inverted"


@pytest.mark.skipif(not can_emulate(), reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_watch_redeploys_the_qemu_chip_when_its_sensor_drifts(repo, tmp_path):
    """The emulated Cortex-M4 on its own drifting sensor: watch sees the OOD rate rise, deploys the
    inverted model over the UART, and the chip's OOD rate falls."""
    args = [sys.executable, "-m", "edgefp", "sim", "--profile", "qemu-m4", "--feed", "digits:test:0-4", "--rate", "50"]
    sim = subprocess.Popen(args + ["--drift-at", "20", "--drift", "invert"], stdout=subprocess.PIPE, text=True)
    try:
        url = sim.stdout.readline().strip()
        plain = next(entry for entry in repo.entries() if entry.name == "digits04")
        assert edgefp("flash", repo.archive_path(plain), "--port", url).returncode == 0
        options = ("--window", "40", "--once", "--interval", "0.3", "--events", str(tmp_path / "events.jsonl"))
        watched = edgefp("watch", "--port", url, "--repo", repo.root, *options)
        event = json.loads(watched.stdout.splitlines()[-1])
        assert event["decision"] == DEPLOYED and event["model"] == "digits04_inverted", watched.stderr
        after = [json.loads(line) for line in edgefp("monitor", "--port", url, "--count", "40").stdout.splitlines()]
    finally:
        sim.terminate()
        sim.wait(10)
    assert event["ood_rate"] >= 0.3 and np.mean([e["ood"] for e in after]) < 0.3
