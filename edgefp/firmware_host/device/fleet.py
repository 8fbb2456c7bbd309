"""The device side of an MQTT fleet (docs/fleet.md): a device joins a broker under its id and tags,
keeps a retained status (what HELLO says, counters; a last will marks it offline), publishes each OOD
input as an event at QoS 1, and answers the device protocol tunnelled through the broker, so that a
controller flashes it, reads its counters and pulls its OOD samples exactly as over a cable.

:class:`AgentMember` puts an in-process :class:`~edgefp.firmware_host.device.agent.Agent` on the
broker (each controller gets a session of its own, as a TCP connection does); :class:`Gateway` does it
for a device on a serial line (the C firmware, on a board, under QEMU or built for this machine),
forwarding the tunnelled frames to it under sequence numbers of its own.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
import zlib

import edgefp
from edgefp.errors import EdgefpError
from edgefp.firmware_host.link import client, mqtt, protocol
from edgefp.firmware_host.link.framing import DELIMITER, Frame, FrameReader, encode_frame
from edgefp.firmware_host.link.mqtt import publish_json, topic
from edgefp.firmware_host.link.protocol import RESPONSE, Msg
from edgefp.firmware_host.link.transport import read_some

STATUS_S = 5.0  # a status is published at least this often, and at once when the active bundle changes
SESSION_S = 300  # the broker keeps a device's subscriptions and QoS 1 requests this long while it is away
IDLE_S = 120.0  # a controller's session that sent nothing for this long is closed
MAX_SESSIONS = 8
TICK_S = 0.1
ANSWER_S, SLOW_S = 2.0, 30.0  # a gateway waits this long for a device's answer before it sends the next request
SLOW_REQUESTS = {Msg.UPLOAD_END, Msg.ACTIVATE, Msg.BENCH, Msg.RESET}
ROUTES_KEPT = 4096


def status_payload(device_id: str, tags: dict, hello: protocol.Hello, counters: protocol.Counters, last_event):
    """The retained status: the device, its tags, what HELLO says and its counters."""
    active = hello.active
    return {
        "device_id": device_id,
        "online": True,
        "tags": tags,
        "bundle": active.name if active else None,
        "sha256": active.sha256.hex() if active else None,
        "firmware": hello.firmware,
        "board": hello.board,
        "runtime": hello.runtime,
        "inputs": counters.inputs,
        "ood": counters.ood,
        "ood_rate": round(counters.window_ood_rate, 4),
        "last_event": last_event,
        "time": time.time(),
    }


class Member:
    """A device on the broker: status, online flag (last will), events and the request tunnel."""

    def __init__(self, broker: mqtt.Broker, device_id: str, tags: dict | None = None, *, status_s: float = STATUS_S):
        self.device_id, self.tags, self.status_s = mqtt.check_device_id(device_id), dict(tags or {}), status_s
        self.last_event: float | None = None
        self._published_at, self._published_sha = 0.0, None
        self.client = mqtt.connect(
            broker,
            f"edgefp-device-{device_id}",
            on_message=self._on_message,
            subscriptions=((topic(device_id, "rx", "+"), 1),),
            will=(topic(device_id, "online"), b"false"),
            birth=(topic(device_id, "online"), b"true"),  # again after a reconnection (the will may have fired)
            session_expiry_s=SESSION_S,
        )

    def _on_message(self, client, userdata, message) -> None:
        self.deliver(message.topic.rsplit("/", 1)[1], message.payload)

    def deliver(self, session: str, data: bytes) -> None:
        raise NotImplementedError

    def status(self) -> dict:
        raise NotImplementedError

    def publish_event(self, number: int, result, layer_errors) -> None:
        """One OOD input, at QoS 1: its number, wall-clock time, prediction, score and layer errors."""
        self.last_event = time.time()
        event = {
            "device_id": self.device_id,
            "input": number,
            "time": self.last_event,
            "pred": result.pred,
            "score": round(float(result.score), 4),
            "layer_errors": layer_errors,
            "latency_us": result.latency_us,
        }
        publish_json(self.client, topic(self.device_id, "events"), event)

    def tick(self) -> None:
        """Publish the status when it is due or the active bundle changed."""
        status = self.status()
        now = time.monotonic()
        if status["sha256"] != self._published_sha or now - self._published_at >= self.status_s:
            publish_json(self.client, topic(self.device_id, "status"), status, retain=True)
            self._published_at, self._published_sha = now, status["sha256"]

    def run(self, stop: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set (or the process ends)."""
        stop = stop or threading.Event()
        try:
            while not stop.wait(TICK_S):
                self.tick()
        finally:
            self.close()

    def close(self) -> None:
        """Leave the broker: offline now (the last will says the same if this never runs)."""
        with contextlib.suppress(RuntimeError, ValueError):  # the broker is gone: its will says the same
            self.client.publish(topic(self.device_id, "online"), b"false", qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


class AgentMember(Member):
    """An agent on the broker: each controller session is served by the agent as a connection of its own."""

    def __init__(self, agent, broker: mqtt.Broker, device_id: str, tags: dict | None = None, **options):
        self.agent = agent
        self.sessions: dict[str, tuple[mqtt.TunnelPort, threading.Event]] = {}
        self._lock = threading.Lock()
        super().__init__(broker, device_id, tags, **options)
        agent.listeners.append(self._on_result)

    def _on_result(self, result, number: int) -> None:
        if result.ood:
            self.publish_event(number, result, [int(e) for e in result.errors])

    def deliver(self, session: str, data: bytes) -> None:
        with self._lock:
            if session not in self.sessions:
                if len(self.sessions) >= MAX_SESSIONS:
                    return  # as a full TCP server: the controller gets no answer
                port, stop = mqtt.TunnelPort(self.client, topic(self.device_id, "tx", session)), threading.Event()
                self.sessions[session] = (port, stop)
                threading.Thread(target=self._serve, args=(port, stop, session), daemon=True).start()
            self.sessions[session][0].deliver(data)

    def _serve(self, port: mqtt.TunnelPort, stop: threading.Event, session: str) -> None:
        try:
            self.agent.serve(port, stop, peer=f"mqtt:{session}")
        finally:
            port.close()

    def status(self) -> dict:
        agent = self.agent
        with agent.lock:
            active = agent.active
            name = active.bundle.manifest.name if active else ""
            slots = [protocol.Slot(protocol.SlotState.ACTIVE, 0, active.sha256, name)] if active else []
            firmware = f"edgefp-agent {edgefp.__version__}"
            hello = protocol.Hello(0, firmware, agent.board.name, agent.board.runtime, 0, 0, slots)
            return status_payload(self.device_id, self.tags, hello, agent.current_counters(), self.last_event)

    def tick(self) -> None:
        super().tick()
        with self._lock:
            for session, (port, stop) in list(self.sessions.items()):
                if time.monotonic() - port.last_used > IDLE_S:
                    stop.set()
                    del self.sessions[session]

    def close(self) -> None:
        self.agent.listeners.remove(self._on_result)
        with self._lock:
            for _port, stop in self.sessions.values():
                stop.set()
        super().close()


def on_broker(agent, *, member: AgentMember, serial_path=None, tcp=None, samples_address=None, on_address=None):
    """Serve ``agent`` on the broker through ``member`` until the process ends, and on ``serial_path`` or
    ``tcp`` too when given (:func:`~edgefp.firmware_host.device.serve.serve`); sensor windows on
    ``samples_address``."""
    from edgefp.firmware_host.device.samples import SampleServer
    from edgefp.firmware_host.device.serve import serve

    if serial_path is None and tcp is None:
        with contextlib.ExitStack() as opened:
            if samples_address is not None:
                address = opened.enter_context(SampleServer(agent, samples_address)).address
                if on_address:
                    on_address("samples", address)
            member.run()
        return
    stop = threading.Event()
    thread = threading.Thread(target=member.run, args=(stop,), daemon=True)
    thread.start()
    try:
        serve(agent, serial_path=serial_path, tcp=tcp, samples_address=samples_address, on_address=on_address)
    finally:
        stop.set()
        thread.join(10)


class Gateway(Member):
    """A device on a serial line, on the broker: the gateway keeps the link, forwards each controller's
    frames under sequence numbers of its own, one request at a time (a microcontroller reads the next
    request when it has answered the last), routes the answers back, turns the device's events into
    MQTT events, and asks it for HELLO and counters for the status. ``device`` is open (its handshake
    done) and stays the caller's to close; a device that requires a shared key is not supported."""

    def __init__(self, device: client.Device, broker: mqtt.Broker, device_id: str, tags: dict | None = None, **options):
        if device.info.auth_required:
            raise EdgefpError(f"{device.url}: the device requires a shared key; the gateway serves devices without one")
        self.url, self.port = device.url, device.port
        self._requests: queue.Queue = queue.Queue()  # (session or None, frame, answer slot or None)
        self._answered = threading.Condition()
        self._seq, self._waiting = 0, None  # the gateway's last sequence number; the one awaiting an answer
        self._routes: collections.OrderedDict[int, tuple] = collections.OrderedDict()  # seq -> (session, seq, slot)
        self._last: dict[str, tuple[tuple[int, int], int]] = {}  # session -> ((seq, crc), gateway seq)
        self._readers: dict[str, FrameReader] = {}
        self._stop, self._activated = threading.Event(), threading.Event()
        self._threads = [threading.Thread(target=target, daemon=True) for target in (self._read_link, self._write_link)]
        for thread in self._threads:
            thread.start()
        super().__init__(broker, device_id, tags, **options)

    def _write_link(self) -> None:
        """Send the queued requests one at a time, each when the last was answered or timed out."""
        while not self._stop.is_set():
            try:
                session, frame, slot = self._requests.get(timeout=0.1)
            except queue.Empty:
                continue
            key = (frame.seq, zlib.crc32(bytes([frame.type]) + frame.body))
            last = self._last.get(session) if session is not None else None
            if last and last[0] == key:  # a repeat: the same number, so that the device answers it again
                seq = last[1]
            else:
                self._seq = self._seq % 0xFFFF + 1
                seq = self._seq
                self._routes[seq] = (session, frame.seq, slot)
                while len(self._routes) > ROUTES_KEPT:
                    self._routes.popitem(last=False)
                if session is not None:
                    self._last[session] = (key, seq)
            with self._answered:
                self._waiting = seq
            try:
                self.port.write(DELIMITER + encode_frame(frame.type, seq, frame.body))
            except OSError:
                self._stop.set()
                return
            wait = SLOW_S if frame.type in SLOW_REQUESTS else ANSWER_S
            with self._answered:
                self._answered.wait_for(lambda: self._waiting is None or self._stop.is_set(), wait)

    def _ask(self, type_: int, body: bytes, parse):
        """The gateway's own request to the device; its parsed answer."""
        slot: list[Frame] = []
        self._requests.put((None, Frame(type_, 0, body), slot))
        with self._answered:
            if not self._answered.wait_for(lambda: slot or self._stop.is_set(), SLOW_S):
                raise client.LinkError(f"{self.url}: no answer to {protocol.type_name(type_)} from the device")
        if not slot:
            raise client.LinkError(f"{self.url}: the link to the device dropped")
        if slot[0].type == Msg.ERROR:
            raise client.DeviceError(*protocol.unpack_error(slot[0].body))
        return parse(slot[0].body)

    def deliver(self, session: str, data: bytes) -> None:
        reader = self._readers.setdefault(session, FrameReader())
        for item in reader.feed(data):
            if isinstance(item, Frame):
                self._requests.put((session, item, None))

    def _read_link(self) -> None:
        reader = FrameReader()
        while not self._stop.is_set():
            try:
                data = read_some(self.port, 0.1)
            except OSError:
                self._stop.set()
                break
            for item in reader.feed(data):
                if isinstance(item, Frame):
                    self._route(item)
        with self._answered:
            self._answered.notify_all()

    def _route(self, frame: Frame) -> None:
        if frame.type == Msg.EVENT:
            event = protocol.Event.unpack(frame.body)
            if event.ood:
                self.publish_event(event.input, event, None)
            return
        session, seq, slot = self._routes.get(frame.seq, (None, None, None))
        if seq is None:
            return
        with self._answered:
            if self._waiting == frame.seq:
                self._waiting = None
            if slot is not None:
                slot.append(frame)
            self._answered.notify_all()
        if session is None:
            return
        if frame.type == Msg.ACTIVATE | RESPONSE:
            self._activated.set()
        self.client.publish(topic(self.device_id, "tx", session), DELIMITER + encode_frame(frame.type, seq, frame.body))

    def status(self) -> dict:
        self._hello = self._ask(Msg.HELLO, protocol.VERSION.to_bytes(2, "little"), protocol.Hello.unpack)
        self._ask(Msg.EVENTS, b"\x01", lambda body: body)  # kept on, whatever the controllers asked
        counters = self._ask(Msg.GET_COUNTERS, b"", protocol.Counters.unpack)
        return status_payload(self.device_id, self.tags, self._hello, counters, self.last_event)

    def tick(self) -> None:
        """Ask the device for its status only when due, or when a controller activated a bundle."""
        if self._stop.is_set():
            raise client.LinkError(f"{self.url}: the link to the device dropped")
        if self._activated.is_set() or time.monotonic() - self._published_at >= self.status_s:
            self._activated.clear()
            super().tick()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        super().close()


def serve_gateway(url: str, broker: mqtt.Broker, device_id: str, tags: dict | None = None, *, stop=None) -> None:
    """Put the device at ``url`` on the broker until ``stop`` is set (or the process ends); when the link
    drops (the board resets, the cable is pulled) the device goes offline, and comes back when it
    answers again (:func:`~edgefp.firmware_host.link.reconnect.reconnecting`)."""
    from edgefp.firmware_host.link.reconnect import reconnecting

    stop = stop or threading.Event()
    reconnecting(url, lambda device: Gateway(device, broker, device_id, tags).run(stop), done=stop.is_set)
