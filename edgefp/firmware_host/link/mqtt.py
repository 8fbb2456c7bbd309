"""The MQTT link of a fleet (docs/fleet.md): broker URLs, connecting with paho-mqtt (MQTT 5, TLS,
username and password), the topic tree, and :class:`TunnelPort`, a pyserial-like port whose bytes travel
as MQTT messages, so that the device protocol (and every operation built on it: flash, counters,
pull_ood) runs unchanged between a controller and a device through a broker.

:func:`local_broker` starts a Mosquitto of its own on a free loopback port (tests, benchmarks, demos).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass

from edgefp.errors import EdgefpError

ROOT = "edgefp/devices"  # edgefp/devices/<device-id>/{status,online,events,rx/<session>,tx/<session>}
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
PASSWORD_ENV = "EDGEFP_BROKER_PASSWORD"
MAX_QUEUED = 10000  # messages a client holds for the broker
MOSQUITTO = "mosquitto"


def topic(device_id: str, *parts: str) -> str:
    return "/".join((ROOT, device_id, *parts))


def device_of(name: str) -> str:
    """The device id in a topic of the tree."""
    return name[len(ROOT) + 1 :].split("/", 1)[0]


def check_device_id(device_id: str) -> str:
    if not device_id or any(c in device_id for c in "/+#\0") or len(device_id) > 128:
        raise EdgefpError(f"device id '{device_id}' must be 1 to 128 characters without '/', '+', '#'")
    return device_id


@dataclass(frozen=True)
class Broker:
    """Where the broker is and how to log in: ``mqtt://[USER[:PASSWORD]@]HOST[:PORT]`` (1883), or
    ``mqtts://...`` (TLS, 8883; ``ca_file`` to trust a private CA). The password may come from
    ``$EDGEFP_BROKER_PASSWORD`` instead of the URL."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker(url: str, ca_file: str | None = None) -> Broker:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/"):
        raise EdgefpError(f"broker URL '{url}' must be mqtt://HOST:PORT or mqtts://HOST:PORT (TLS)")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise EdgefpError(f"broker URL '{url}' has a port that is not a number from 0 to 65535") from None
    if ca_file is not None and not os.path.isfile(ca_file):
        raise EdgefpError(f"CA file {ca_file} does not exist")
    password = urllib.parse.unquote(parts.password) if parts.password else os.environ.get(PASSWORD_ENV)
    username = urllib.parse.unquote(parts.username) if parts.username else None
    return Broker(parts.hostname, port, parts.scheme == "mqtts", username, password, ca_file)


def connect(
    broker: Broker,
    client_id: str,
    *,
    on_message=None,
    subscriptions: tuple[tuple[str, int], ...] = (),
    will: tuple[str, bytes] | None = None,
    birth: tuple[str, bytes] | None = None,
    session_expiry_s: int = 0,
):
    """A connected paho client (MQTT 5) with its network loop running; ``subscriptions`` are made again
    on every reconnect, ``will`` (topic, payload) is published retained at QoS 1 if the connection
    drops, and ``birth`` (topic, payload) retained at QoS 1 on every connection. A persistent session
    (``session_expiry_s`` > 0) keeps QoS 1 messages while the client is away. Raises EdgefpError when
    the broker cannot be reached or refuses the login."""
    try:
        import paho.mqtt.client as paho
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
    except ImportError:
        raise EdgefpError("the fleet needs paho-mqtt: pip install 'edgefp[device]'") from None

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.max_queued_messages_set(MAX_QUEUED)  # while the broker is away, the oldest are kept, newer ones dropped
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file)
    if will:
        client.will_set(will[0], will[1], qos=1, retain=True)
    connected, outcome = threading.Event(), []

    def on_connect(client, userdata, flags, reason, properties):
        outcome[:] = [reason]
        if not reason.is_failure and subscriptions:
            client.subscribe(list(subscriptions))
        if not reason.is_failure and birth:
            client.publish(birth[0], birth[1], qos=1, retain=True)
        connected.set()

    client.on_connect = on_connect
    if on_message:
        client.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = session_expiry_s
    try:
        client.connect(broker.host, broker.port, KEEPALIVE_S, clean_start=session_expiry_s == 0, properties=properties)
    except (OSError, ValueError) as exc:
        raise EdgefpError(f"cannot reach the broker at {broker.url}: {exc}; is it running there?") from None
    client.loop_start()
    if not connected.wait(CONNECT_TIMEOUT_S) or outcome[0].is_failure:
        client.loop_stop()
        client.disconnect()
        why = str(outcome[0]) if outcome else "no answer"
        raise EdgefpError(f"the broker at {broker.url} refused the connection ({why}); check the user and password")
    return client


def publish_json(client, name: str, payload: dict, *, qos: int = 1, retain: bool = False):
    return client.publish(name, json.dumps(payload, separators=(",", ":")), qos=qos, retain=retain)


class TunnelPort:
    """One end of a byte stream carried by MQTT: ``write`` publishes to ``out_topic`` (QoS 1); what
    :meth:`deliver` is given (the messages of the other end) is read from a pipe, so that ``fileno``
    works with select like a serial port's. A reader that falls more than a pipe's worth behind loses
    bytes, as on a serial line: the protocol's retries recover them."""

    def __init__(self, client, out_topic: str):
        self.client, self.out_topic, self.timeout = client, out_topic, 0
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        os.set_blocking(self._read, False)
        self.closed = False
        self.last_used = time.monotonic()
        self._lock = threading.Lock()  # no delivery into a pipe once closed (its descriptors may be reused)

    def fileno(self) -> int:
        return self._read

    def deliver(self, data: bytes) -> None:
        self.last_used = time.monotonic()
        with self._lock, contextlib.suppress(OSError):
            if not self.closed:
                os.write(self._write, data)

    def read(self, size: int = 1) -> bytes:
        try:
            return os.read(self._read, size)
        except BlockingIOError:
            return b""

    def write(self, data: bytes) -> int:
        if self.closed:
            raise OSError("the MQTT tunnel is closed")
        self.last_used = time.monotonic()
        info = self.client.publish(self.out_topic, bytes(data), qos=1)
        if info.rc != 0:
            raise OSError(f"the broker connection is down (paho error {info.rc})")
        return len(data)

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                os.close(self._read)
                os.close(self._write)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mosquitto() -> str | None:
    """Mosquitto's program (Debian puts it in /usr/sbin, not on every user's PATH), or None."""
    return shutil.which(MOSQUITTO) or shutil.which(MOSQUITTO, path="/usr/sbin")


@contextlib.contextmanager
def local_broker(*, password_file: str | None = None, tls: tuple[str, str] | None = None, port: int = 0):
    """Run Mosquitto on loopback, on ``port`` or a free one, with a configuration of its own (no
    persistence, anonymous unless ``password_file``, TLS with ``tls`` = (certificate file, key file));
    yield its URL. The broker stops when the block ends."""
    program = mosquitto()
    if program is None:
        raise EdgefpError("Mosquitto is not installed; install the Debian package 'mosquitto' (make firmware-tools)")
    with tempfile.TemporaryDirectory(prefix="edgefp-broker-") as scratch:
        port = port or free_port()
        config = os.path.join(scratch, "mosquitto.conf")
        login = f"password_file {password_file}\nallow_anonymous false" if password_file else "allow_anonymous true"
        settings = [f"listener {port} 127.0.0.1", login, "persistence false", "sys_interval 1"]
        if tls:
            settings += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        settings.append("max_queued_messages 100000")  # a controller away for a while misses no QoS 1 event
        if os.geteuid() == 0:
            settings.append("user root")  # started as root it would become 'mosquitto', who cannot read our files
        with open(config, "w") as handle:
            handle.write("\n".join(settings) + "\n")
        log = open(os.path.join(scratch, "mosquitto.log"), "w+b")  # a pipe nobody reads would fill and stop it
        process = subprocess.Popen([program, "-c", config], stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise EdgefpError(f"Mosquitto did not start: {log.read().decode(errors='replace').strip()}")
                time.sleep(0.02)
            yield f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
