"""An MQTT fleet on a real Mosquitto started for each test: status, deploy by tag with the devices' own
refusals, last will, login, and the CLI's one-line errors (no trained model: a wrapped TFLite model)."""

import contextlib
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError
from edgefp.firmware_host.boards import Board
from edgefp.firmware_host.device.agent import Agent, serving
from edgefp.firmware_host.device.fleet import AgentMember, Gateway
from edgefp.firmware_host.link import client, mqtt, protocol
from edgefp.firmware_host.link.mqtt import local_broker, parse_broker
from edgefp.firmware_host.link.protocol import Msg
from edgefp.fleet import ALREADY_ACTIVE, DEPLOYED, OFFLINE, REFUSED, Controller, FleetWatch, deploy
from edgefp.wrap import wrap
from tests.cli.test_cli import edgefp
from tests.conftest import KEY

MODELS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "models")
pytestmark = pytest.mark.skipif(not mqtt.mosquitto(), reason="needs mosquitto (make firmware-tools)")


@pytest.fixture(scope="module")
def hello(tmp_path_factory):
    """A small model without a fingerprint, as archive bytes."""
    path = str(tmp_path_factory.mktemp("hello") / "hello.efp")
    wrap(os.path.join(MODELS, "tflm_hello_world_int8.tflite"), path)
    return path, Bundle.load(path).archive_bytes()


@pytest.fixture
def broker():
    with local_broker() as url:
        yield url


@contextlib.contextmanager
def members(url: str, tmp_path, boards: dict[str, tuple[Board | str, dict]], ca_file=None, key=None):
    """Agents on the broker (with a shared ``key``), each served by its member's loop in a thread; yields
    {id: agent}."""
    stop, agents, threads = threading.Event(), {}, []
    for device_id, (board, tags) in boards.items():
        agents[device_id] = Agent(str(tmp_path / device_id), board, key=key)
        member = AgentMember(agents[device_id], parse_broker(url, ca_file), device_id, tags, status_s=0.2)
        threads.append(threading.Thread(target=member.run, args=(stop,), daemon=True))
        threads[-1].start()
    try:
        yield agents
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def wait_for(condition, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_deploy_by_tag_reports_each_device_with_its_refusal(broker, hello, tmp_path):
    """Devices tagged site=lab get the bundle through the same checks as a cable flash: the pi agents
    activate it, a board too small refuses it with DOES_NOT_FIT and keeps serving what it had; the device
    at another site is not touched; a second deploy uploads nothing."""
    tiny = Board("tiny", "a board with 1 KB for models", "litert", 1024, 1 << 20)
    boards = {
        "pi-1": ("pi", {"site": "lab"}),
        "pi-2": ("pi", {"site": "lab", "row": "2"}),
        "tiny-1": (tiny, {"site": "lab"}),
        "pi-9": ("pi", {"site": "field"}),
    }
    with members(broker, tmp_path, boards) as agents, Controller(parse_broker(broker)) as controller:
        wait_for(lambda: len(controller.devices()) == 4)
        status = {found["device_id"]: found for found in controller.devices()}
        assert all(found["online"] and found["bundle"] is None for found in status.values())
        assert status["pi-2"]["tags"] == {"site": "lab", "row": "2"} and status["tiny-1"]["board"] == "tiny"
        results = {found["device_id"]: found for found in deploy(controller, hello[1], {"site": "lab"})}
        assert set(results) == {"pi-1", "pi-2", "tiny-1"}
        assert results["pi-1"]["result"] == results["pi-2"]["result"] == DEPLOYED
        assert results["tiny-1"]["result"] == REFUSED and results["tiny-1"]["error"] == "DOES_NOT_FIT"
        assert "bytes more flash than tiny has" in results["tiny-1"]["message"]
        assert agents["pi-1"].bundle.manifest.name == "hello" and agents["tiny-1"].bundle is None
        assert agents["pi-9"].bundle is None
        wait_for(lambda: len(controller.devices({"bundle": "hello"})) == 2)
        assert [found["device_id"] for found in controller.devices({"bundle": "hello"})] == ["pi-1", "pi-2"]
        again = deploy(controller, hello[1], {"row": "2"})
        assert [(found["device_id"], found["result"]) for found in again] == [("pi-2", ALREADY_ACTIVE)]
        with pytest.raises(EdgefpError, match="no device matches `where` site=moon .4 devices known"):
            deploy(controller, hello[1], {"site": "moon"})


def test_an_agent_with_a_key_takes_bundles_from_controllers_that_know_it(broker, hello, tmp_path):
    """Anyone who may publish on the broker reaches the device: an agent with a shared key refuses the
    controllers without it."""
    with members(broker, tmp_path, {"pi-1": ("pi", {})}, key=KEY) as agents:
        with Controller(parse_broker(broker)) as controller:
            wait_for(lambda: controller.devices())
            [refused] = deploy(controller, hello[1], {})
        assert refused["result"] == "failed" and "requires a shared key" in refused["message"]
        with Controller(parse_broker(broker), key=b"x" * 32) as controller:
            wait_for(lambda: controller.devices())
            [wrong] = deploy(controller, hello[1], {})
        assert wrong["result"] == REFUSED and wrong["error"] == "AUTH_FAILED"
        assert agents["pi-1"].bundle is None
        with Controller(parse_broker(broker), key=KEY) as controller:
            wait_for(lambda: controller.devices())
            assert deploy(controller, hello[1], {})[0]["result"] == DEPLOYED


def test_a_gateway_puts_a_serial_device_on_the_broker(broker, hello, tmp_path):
    """A device on a serial line (an agent on a pty, as the firmware is on a UART) behind a gateway:
    its status on the broker, a deploy through it, and a request the controller sends again (its answer
    lost) is answered again by the device, not run twice."""
    agent, stop = Agent(str(tmp_path / "serial"), "pi"), threading.Event()
    with serving(agent, "pty") as url, client.open_device(url) as link:
        gateway = Gateway(link, parse_broker(broker), "serial-1", {"site": "lab"})
        thread = threading.Thread(target=gateway.run, args=(stop,), daemon=True)
        thread.start()
        try:
            with Controller(parse_broker(broker)) as controller:
                wait_for(lambda: controller.devices({"site": "lab"}))
                assert controller.devices()[0]["firmware"].startswith("edgefp-agent")
                assert [found["result"] for found in deploy(controller, hello[1], {"site": "lab"})] == [DEPLOYED]
                assert agent.bundle.manifest.name == "hello"
                wait_for(lambda: controller.devices({"bundle": "hello"}))
                with controller.open("serial-1") as device:
                    archive = hello[1]
                    begin = protocol.pack_upload_begin(len(archive), hashlib.sha256(archive).digest(), "again")
                    device.request(Msg.UPLOAD_BEGIN, begin)
                    chunk = struct.pack("<I", 0) + archive[:100]
                    assert device.request(Msg.UPLOAD_CHUNK, chunk) == struct.pack("<I", 100)
                    device.seq -= 1  # the same frame again: the device replays its answer
                    assert device.request(Msg.UPLOAD_CHUNK, chunk) == struct.pack("<I", 100)
                    assert device.request(Msg.UPLOAD_CHUNK, struct.pack("<I", 100) + archive[100:200])
        finally:
            stop.set()
            thread.join(10)
        with Controller(parse_broker(broker)) as controller:
            wait_for(lambda: controller.devices() and not controller.devices()[0]["online"])


def test_a_killed_agent_is_offline_by_its_last_will_and_deploys_skip_it(broker, hello, tmp_path):
    """The agent command on the broker; killed, the broker publishes its will: offline, last status kept."""
    command = [sys.executable, "-m", "edgefp", "agent", "--data-dir", str(tmp_path / "agent"), "--broker", broker]
    agent = subprocess.Popen(command + ["--device-id", "pi-7", "--tag", "site=lab"], stderr=subprocess.PIPE)
    try:
        assert agent.stderr.readline().decode().strip() == f"pi-7 on {broker}"
        shown = edgefp("fleet", "status", "--broker", broker, "--where", "site=lab", "--json")
        assert shown.returncode == 0, shown.stderr
        [found] = json.loads(shown.stdout)
        assert (found["device_id"], found["online"], found["bundle"], found["tags"]) == (
            "pi-7",
            True,
            None,
            {"site": "lab"},
        )
        deployed = edgefp("fleet", "deploy", hello[0], "--broker", broker, "--where", "site=lab", "--json")
        assert deployed.returncode == 0, deployed.stderr
        assert [found["result"] for found in json.loads(deployed.stdout)["devices"]] == [DEPLOYED]
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        agent.stderr.close()
    with Controller(parse_broker(broker)) as controller:
        wait_for(lambda: controller.devices() and not controller.devices()[0]["online"])
        assert controller.devices()[0]["bundle"] == "hello"  # the last status stays, retained
        assert [found["result"] for found in deploy(controller, hello[1], {"site": "lab"})] == [OFFLINE]
    table = edgefp("fleet", "status", "--broker", broker)
    assert table.returncode == 0 and "pi-7" in table.stdout and "1 devices, 0 online" in table.stdout


def test_devices_and_controllers_come_back_when_the_broker_restarts(tmp_path, hello):
    """The broker goes away, its retained messages with it, and comes back on the same port: the agent
    reconnects and says again that it is online and what it runs, and the controller, subscribed again,
    deploys to it."""
    port = mqtt.free_port()
    with contextlib.ExitStack() as stack:
        with local_broker(port=port) as url:
            stack.enter_context(members(url, tmp_path, {"pi-1": ("pi", {"site": "lab"})}))
            controller = stack.enter_context(Controller(parse_broker(url)))
            wait_for(lambda: controller.devices({"site": "lab"}))
        controller._status.clear()
        controller._online.clear()
        with local_broker(port=port):
            wait_for(lambda: [found["online"] for found in controller.devices({"site": "lab"})] == [True], 20)
            assert deploy(controller, hello[1], {"site": "lab"})[0]["result"] == DEPLOYED


def test_a_broker_with_passwords_refuses_a_wrong_login(tmp_path, hello):
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "fleet", "s3cret"], check=True)
    with local_broker(password_file=str(passwords)) as url:
        with pytest.raises(EdgefpError, match="refused the connection .*check the user and password"):
            Controller(parse_broker(url.replace("//", "//fleet:wrong@")))
        with pytest.raises(EdgefpError, match="refused the connection"):
            Controller(parse_broker(url))
        with members(url.replace("//", "//fleet:s3cret@"), tmp_path, {"pi-1": ("pi", {})}):
            os.environ[mqtt.PASSWORD_ENV] = "s3cret"
            try:
                with Controller(parse_broker(url.replace("//", "//fleet@"))) as controller:
                    wait_for(lambda: controller.devices())
                    assert deploy(controller, hello[1], {})[0]["result"] == DEPLOYED
            finally:
                del os.environ[mqtt.PASSWORD_ENV]


def self_signed_certificate(key_path: str, cert_path: str) -> None:
    """A broker's key and a certificate for 127.0.0.1 and localhost, signed by itself, valid for a day."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with open(key_path, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))


def test_tls_brokers_are_checked_against_the_given_ca(tmp_path, hello):
    """mqtts:// with --broker-ca: a broker whose certificate that CA signed is reached, one it did not is
    refused (the system's CAs know neither)."""
    key, cert = str(tmp_path / "broker.key"), str(tmp_path / "broker.pem")
    self_signed_certificate(key, cert)
    with local_broker(tls=(cert, key)) as url:
        assert url.startswith("mqtts://")
        with pytest.raises(EdgefpError, match="cannot reach the broker at mqtts://.*certificate verify failed"):
            Controller(parse_broker(url))
        with members(url, tmp_path, {"pi-1": ("pi", {})}, ca_file=cert):
            with Controller(parse_broker(url, cert)) as controller:
                wait_for(lambda: controller.devices())
                assert deploy(controller, hello[1], {})[0]["result"] == DEPLOYED


def test_the_fleet_watch_counts_each_device_window_from_its_events(broker):
    """OOD events carry input numbers: a device's rate is the share of its last `window` inputs that were
    OOD, from the first input seen; repeats (QoS 1) count once; counting starting again (a new bundle)
    starts a fresh window; a second device of the same group waits while the group's decision is made."""
    verdicts = []
    fleet = FleetWatch(parse_broker(broker), None, ood_rate=0.5, window=10, min_samples=3, group_by="site")
    fleet.on_verdict = lambda device_id, event, verdict: verdicts.append((device_id, event["input"], verdict))
    try:
        fleet.controller._status.update(
            {name: {"device_id": name, "tags": {"site": "lab"}} for name in ("a", "b")}
        )  # as their retained status would say
        for number in (101, 103, 103, 105, 107):  # first seen at 101: not a full window until 110
            fleet.handle_event("a", {"input": number})
        assert [v for _, _, v in verdicts] == ["ok", "ok", "duplicate", "ok", "ok"]
        assert fleet.handle_event("a", {"input": 110}) == "drift"  # 5 of the 10 inputs 101..110
        assert fleet._jobs.get_nowait() == ("site=lab", "a", 0.5, 110)
        for number in range(1, 12):
            verdict = fleet.handle_event("b", {"input": number})
        assert verdict == "waiting"  # b drifts too, but lab's decision is being made
        fleet._restart("site=lab")
        assert fleet.handle_event("a", {"input": 111}) == "ok"  # a fresh window from 110
        for number in (2, 4, 6, 8, 10):  # a new bundle: counting started again, from 0
            verdict = fleet.handle_event("a", {"input": number})
        assert verdict == "drift" and fleet._jobs.get_nowait()[3] == 10
        assert fleet.handle_event("a", {"input": 12}) == "waiting"
    finally:
        fleet.close()


def test_broker_urls_are_checked():
    assert parse_broker("mqtts://fleet:p%40ss@broker.lan") == mqtt.Broker("broker.lan", 8883, True, "fleet", "p@ss")
    assert parse_broker("mqtt://127.0.0.1").port == 1883
    for url, message in [
        ("http://127.0.0.1:1883", "must be mqtt://HOST:PORT or mqtts://HOST:PORT"),
        ("mqtt://127.0.0.1:99999", "port that is not a number from 0 to 65535"),
        ("mqtt://:1883", "must be mqtt://HOST:PORT"),
        ("mqtt://host:1883/topic", "must be mqtt://HOST:PORT"),
    ]:
        with pytest.raises(EdgefpError, match=message):
            parse_broker(url)
    with pytest.raises(EdgefpError, match="device id 'a/b' must be"):
        mqtt.check_device_id("a/b")


def test_cli_errors_are_one_line(broker, hello, tmp_path):
    closed = mqtt.free_port()
    for args, message in [
        (["fleet", "status", "--broker", f"mqtt://127.0.0.1:{closed}"], "cannot reach the broker at mqtt://127.0.0.1"),
        (["fleet", "status", "--broker", "http://127.0.0.1:1883"], "must be mqtt://HOST:PORT or mqtts://HOST:PORT"),
        (["fleet", "deploy", hello[0], "--broker", broker, "--where", "site=moon"], "no device matches --where site"),
        (["watch", "--repo", str(tmp_path)], "give one of --port URL (one device) and --broker URL (a fleet)"),
    ]:
        result = edgefp(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("edgefp: error: ") and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
