"""The controller side of an MQTT fleet (docs/fleet.md): which devices there are (their retained status),
deploying a bundle to those whose tags match, and the drift loop for the whole fleet.

A :class:`Controller` is one connection to the broker. It opens any device as a
:class:`~edgefp.firmware_host.link.client.Device` over the broker (the device protocol tunnelled through
MQTT), so that deploying is :func:`~edgefp.firmware_host.link.client.flash` and a drift decision is
:func:`edgefp.watch.decide`, as over a cable: the device verifies, writes its inactive slot and
activates exactly as it does for ``edgefp flash``, and refuses with the same error codes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import queue
import threading
import time

from edgefp.errors import EdgefpError, option
from edgefp.firmware_host.link import client, mqtt, protocol
from edgefp.firmware_host.link.mqtt import ROOT, topic

SETTLE_S = 0.3  # retained statuses have all arrived when none came for this long
SETTLE_MAX_S = 5.0
DEVICE_TIMEOUT_S = 5.0  # per request over the broker, before the device protocol resends
DEPLOY_WORKERS = 100
DEPLOYED, ALREADY_ACTIVE, REFUSED, FAILED, OFFLINE = "deployed", "already active", "refused", "failed", "offline"


def matches(status: dict, where: dict[str, str]) -> bool:
    """Whether a device's tags (and ``device_id``, ``bundle``) have every KEY=VALUE of ``where``."""
    fields = {"device_id": status["device_id"], "bundle": status.get("bundle"), **status.get("tags", {})}
    return all(fields.get(key) == value for key, value in where.items())


class Controller:
    """A connection to the fleet's broker: device statuses as they come, events to ``on_event(device_id,
    event)`` when given (QoS 1; ``session_expiry_s`` > 0 with a fixed ``client_id`` keeps them while the
    controller is away), and devices opened over the broker with :meth:`open` (with the shared ``key`` of
    agents that require one)."""

    def __init__(
        self,
        broker: mqtt.Broker,
        *,
        client_id: str | None = None,
        on_event=None,
        session_expiry_s: int = 0,
        key: bytes | None = None,
    ):
        self.session, self.key = client_id or f"edgefp-controller-{os.urandom(4).hex()}", key
        mqtt.check_device_id(self.session)
        self.on_event = on_event
        self._status: dict[str, dict] = {}
        self._online: dict[str, bool] = {}
        self._ports: dict[str, mqtt.TunnelPort] = {}
        self._last_status = time.monotonic()
        subscriptions = [(f"{ROOT}/+/status", 1), (f"{ROOT}/+/online", 1), (f"{ROOT}/+/tx/{self.session}", 1)]
        if on_event:
            subscriptions.append((f"{ROOT}/+/events", 1))
        self.client = mqtt.connect(
            broker,
            self.session,
            on_message=self._on_message,
            subscriptions=tuple(subscriptions),
            session_expiry_s=session_expiry_s,
        )

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client, userdata, message) -> None:
        device_id, _, kind = message.topic[len(ROOT) + 1 :].partition("/")
        kind = kind.split("/", 1)[0]
        if kind == "tx":
            port = self._ports.get(device_id)
            if port is not None:
                port.deliver(message.payload)
            return
        try:
            if kind == "online":
                self._online[device_id] = message.payload == b"true"
            elif kind == "status":
                self._status[device_id] = json.loads(message.payload)
            elif kind == "events" and self.on_event:
                self.on_event(device_id, json.loads(message.payload))
        except ValueError:
            return  # not JSON: not from an edgefp device
        self._last_status = time.monotonic()

    def settle(self, quiet_s: float = SETTLE_S) -> None:
        """Wait until the retained statuses have arrived (none came for ``quiet_s`` seconds)."""
        deadline = time.monotonic() + SETTLE_MAX_S
        time.sleep(quiet_s)
        while time.monotonic() - self._last_status < quiet_s and time.monotonic() < deadline:
            time.sleep(0.05)

    def devices(self, where: dict[str, str] | None = None) -> list[dict]:
        """Every device the broker has a status of, matching ``where``, by id: each with at least
        ``device_id``, ``online``, ``bundle`` and ``tags``."""
        found = []
        for device_id in sorted(self._status):
            status = {**self._status[device_id], "online": self._online.get(device_id, False)}
            if matches(status, where or {}):
                found.append(status)
        return found

    def select(self, where: dict[str, str]) -> list[dict]:
        """The devices matching ``where``; an error when none does."""
        found = self.devices(where)
        if not found:
            wanted = " ".join(f"{key}={value}" for key, value in where.items()) or "(anything)"
            known = len(self.devices())
            raise EdgefpError(f"no device matches {option('where')} {wanted} ({known} devices known to the broker)")
        return found

    def open(self, device_id: str, *, timeout: float = DEVICE_TIMEOUT_S) -> client.Device:
        """The device ``device_id`` as a Device over the broker, after its handshake; close it after use."""
        if device_id in self._ports and not self._ports[device_id].closed:
            raise EdgefpError(f"{device_id} is already open on this controller")
        port = mqtt.TunnelPort(self.client, topic(device_id, "rx", self.session))
        self._ports[device_id] = port
        device = client.Device(port, url=f"mqtt:{device_id}", timeout=timeout, retries=3)
        try:
            client.handshake(device, self.key)
        except BaseException:
            device.close()
            raise
        return device


def deploy_one(controller: Controller, status: dict, archive: bytes) -> dict:
    """Flash ``archive`` to one device over the broker; its result, never an exception."""
    report = {"device_id": status["device_id"], "result": OFFLINE, "seconds": 0.0, "wire_bytes": 0}
    if not status["online"]:
        return {**report, "message": "the device is offline"}
    start = time.monotonic()
    try:
        with controller.open(status["device_id"]) as device:
            flashed = client.flash(device, archive)
        result = ALREADY_ACTIVE if flashed["skipped"] else DEPLOYED
        report.update(result=result, bundle=flashed["name"], wire_bytes=flashed["wire_bytes"], message="")
    except client.DeviceError as exc:
        report.update(result=REFUSED, error=protocol.error_name(exc.code), message=str(exc))
    except EdgefpError as exc:
        report.update(result=FAILED, message=str(exc))
    report["seconds"] = round(time.monotonic() - start, 3)
    return report


def deploy(controller: Controller, archive: bytes, where: dict[str, str], *, on_result=None) -> list[dict]:
    """Flash ``archive`` to every device matching ``where``, all at once; one result per device (deployed,
    already active, refused with the device's error code, failed, offline), each told to ``on_result``."""
    return deploy_to(controller, controller.select(where), archive, on_result=on_result)


def deploy_to(controller: Controller, targets: list[dict], archive: bytes, *, on_result=None) -> list[dict]:
    """Flash ``archive`` to the devices of ``targets`` (their statuses) in parallel; one result each."""
    if not targets:
        return []

    def one(status: dict) -> dict:
        report = deploy_one(controller, status, archive)
        if on_result:
            on_result(report)
        return report

    with concurrent.futures.ThreadPoolExecutor(min(DEPLOY_WORKERS, len(targets))) as pool:
        return list(pool.map(one, targets))


class FleetWatch:
    """The drift loop for a fleet: every device's OOD events (each carries its input number) give its OOD
    rate over the last ``window`` inputs; when a device's rate reaches ``ood_rate``, one decision is
    made for its group (devices with the same value of the ``group_by`` tag, else the device alone):
    its OOD samples are pulled over the broker and :func:`edgefp.watch.decide` runs selection and
    deploys the winner to it; in a group the winner then goes to every online device of the group that
    ran the same bundle. While a decision is made, further drift in the group waits; afterwards every
    window of the group starts afresh. Decisions are appended to ``events_path`` as JSON lines."""

    def __init__(
        self,
        broker: mqtt.Broker,
        repo,
        *,
        ood_rate: float = 0.3,
        window: int = 100,
        group_by: str | None = None,
        where: dict | None = None,
        min_samples: int = 8,
        events_path: str | None = None,
        client_id: str = "edgefp-watch",
        session_expiry_s: int = 3600,
        key: bytes | None = None,
        on_decision=None,
        on_verdict=None,
    ):
        self.repo, self.ood_rate, self.window, self.group_by = repo, ood_rate, window, group_by
        self.where, self.min_samples, self.events_path = where, min_samples, events_path
        self.on_decision, self.on_verdict = on_decision, on_verdict
        self._ood: dict[str, collections.deque[int]] = {}  # device -> input numbers of its recent OOD events
        self._start: dict[str, int] = {}  # device -> input number its window started after
        self._last: dict[str, int] = {}
        self._busy: set[str] = set()
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.controller = Controller(
            broker, client_id=client_id, on_event=self.handle_event, session_expiry_s=session_expiry_s, key=key
        )

    def group_of(self, status: dict) -> str:
        tags = status.get("tags", {})
        return f"{self.group_by}={tags[self.group_by]}" if self.group_by in tags else status["device_id"]

    def handle_event(self, device_id: str, event: dict) -> str:
        """Count one OOD event; returns the verdict: "ok", "drift" (a decision is queued), "waiting" (one is
        being made for the group) or "duplicate" (counted already)."""
        verdict = "ok"
        with self._lock:
            number = int(event["input"])
            recent = self._ood.setdefault(device_id, collections.deque())
            if number in recent:  # QoS 1 delivers at least once: counted already
                return self._tell(device_id, event, "duplicate")
            if device_id not in self._last:  # first seen: its window starts here
                self._start[device_id] = number - 1
            elif number < self._last[device_id]:  # the device started counting again (a new bundle)
                recent.clear()
                self._start[device_id] = 0
            self._last[device_id] = number
            recent.append(number)
            while recent and recent[0] <= number - self.window:
                recent.popleft()
            full = number - self._start.get(device_id, 0) >= self.window
            if full and len(recent) / self.window >= self.ood_rate and len(recent) >= self.min_samples:
                status = next(iter(self.controller.devices({"device_id": device_id})), None)
                group = self.group_of(status) if status else device_id
                if group in self._busy:
                    verdict = "waiting"
                else:
                    self._busy.add(group)
                    self._jobs.put((group, device_id, len(recent) / self.window, number))
                    verdict = "drift"
        return self._tell(device_id, event, verdict)

    def _tell(self, device_id: str, event: dict, verdict: str) -> str:
        if self.on_verdict:
            self.on_verdict(device_id, event, verdict)
        return verdict

    def run(self, *, decisions: int | None = None, stop=None) -> list[dict]:
        """Make decisions as drifts come, until ``decisions`` were made or ``stop()`` is true."""
        made: list[dict] = []
        while not (stop and stop()) and (decisions is None or len(made) < decisions):
            try:
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            event = self.decide(*job)
            if event is not None:
                made.append(event)
        return made

    def decide(self, group: str, device_id: str, rate: float, number: int) -> dict | None:
        """Pull the device's OOD samples of the window, run selection on them and deploy the winner (to the
        group too); the decision, recorded, or None when the device holds too few samples of the window."""
        from edgefp import watch

        event = {"time": watch._now(), "device": device_id, "group": group, "ood_rate": round(rate, 4)}
        event["window"] = self.window
        drifted = next(iter(self.controller.devices({"device_id": device_id})), {}).get("sha256")
        try:
            with self.controller.open(device_id) as device:
                samples = [s for s in client.pull_ood(device) if s["input"] > number - self.window]
                if len(samples) < self.min_samples:
                    return None  # the drift is seen again when the window has filled afresh
                event.update(watch.decide(device, self.repo, samples, where=self.where))
            if event["decision"] == watch.DEPLOYED and self.group_by:
                same = [
                    status
                    for status in self.controller.devices()
                    if self.group_of(status) == group
                    and status["device_id"] != device_id
                    and status["online"]
                    and status.get("sha256") == drifted
                ]
                archive = self.repo.load(self.repo.entry(event["model"])).archive_bytes()
                event["group_deployed"] = deploy_to(self.controller, same, archive)
        except EdgefpError as exc:
            event.update(decision="failed", reason=str(exc))
        finally:
            self._restart(group)
        return self._record(event)

    def _record(self, event: dict) -> dict:
        if self.events_path:
            with open(self.events_path, "a") as handle:
                handle.write(json.dumps(event) + "\n")
        if self.on_decision:
            self.on_decision(event)
        return event

    def _restart(self, group: str) -> None:
        with self._lock:
            for status in self.controller.devices():
                if self.group_of(status) == group:
                    self._ood.pop(status["device_id"], None)
                    self._start[status["device_id"]] = self._last.get(status["device_id"], 0)
            self._busy.discard(group)

    def close(self) -> None:
        self.controller.close()
