"""The agent's sample socket: the program that owns the sensor hands the agent windows of raw values
and gets a verdict for each (docs/sensors.md). A Unix domain socket (a path) or TCP on the loopback
interface (``127.0.0.1:PORT``), up to the agent's ``MAX_CLIENTS`` connections at once (more are closed at once).

Framing, little-endian::

    request   count:u32 | count x f32      one window, channels last, before preprocessing
    answer    one line of JSON              {"input", "pred", "label", "score", "ood", "evidence", ...}
                                            or {"error": "..."}: nothing was counted

Each window goes where an INFER request's input goes: the counters, the sample log, the OOD buffer
when flagged, and an event to a subscribed host.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import stat
import struct
import threading

import numpy as np

from edgefp.errors import EdgefpError
from edgefp.firmware_host.device.agent import MAX_CLIENTS
from edgefp.ood import SCORE_UNIT

MAX_VALUES = 1 << 22  # a window of more values is refused and the connection closed
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def verdict(agent, entry) -> dict:
    """A log entry as the JSON answer: label value and name, score and verdict, each layer's evidence."""
    manifest = agent.active.bundle.manifest
    result = entry.result
    evidence = agent.active.bundle.layer_evidence(result.errors[None])[0] / SCORE_UNIT
    label = manifest.labels[result.pred]
    return {
        "input": entry.input,
        "timestamp_ms": entry.timestamp_ms,
        "pred": label.value,
        "label": label.name,
        "score": float(result.score),
        "ood": bool(result.ood),
        "evidence": {layer.name: round(float(z), 4) for layer, z in zip(manifest.layers, evidence)},
        "latency_us": result.latency_us,
    }


def _parse(address: str) -> tuple[int, object]:
    """A path -> a Unix socket; HOST:PORT -> TCP, refused beyond loopback."""
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and os.sep not in address:
        if host not in LOOPBACK:
            raise EdgefpError(f"the sample socket is for programs on this machine; give 127.0.0.1:{port}, not {host}")
        return socket.AF_INET6 if host == "::1" else socket.AF_INET, (host, int(port))
    return socket.AF_UNIX, address


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        agent = self.server.agent
        while True:
            head = self.rfile.read(4)
            if len(head) < 4:
                return
            (count,) = struct.unpack("<I", head)
            if not 0 < count <= MAX_VALUES:
                self._answer({"error": f"a window of {count} values; send 1 to {MAX_VALUES}"})
                return
            payload = self.rfile.read(4 * count)
            if len(payload) < 4 * count:
                return
            try:
                with agent.lock:
                    answer = verdict(agent, agent.classify(np.frombuffer(payload, "<f4")))
            except EdgefpError as exc:
                answer = {"error": str(exc)}
            self._answer(answer)

    def _answer(self, answer: dict) -> None:
        self.wfile.write(json.dumps(answer).encode() + b"\n")
        self.wfile.flush()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.count_lock:
                self.server.connections -= 1


class _Capped:
    """A socketserver mixin: at most MAX_CLIENTS connections at once."""

    def verify_request(self, request, client_address) -> bool:
        with self.count_lock:
            if self.connections >= MAX_CLIENTS:
                return False
            self.connections += 1
            return True


class SampleServer:
    """The sample socket of ``agent`` at ``address``, served from a background thread until closed."""

    def __init__(self, agent, address: str):
        family, where = _parse(address)
        if family == socket.AF_UNIX:
            _remove_stale_socket(where)
            bases = (_Capped, socketserver.ThreadingUnixStreamServer)
        else:
            bases = (_Capped, socketserver.ThreadingTCPServer)
        server_class = type("SampleSocketServer", bases, {"address_family": family, "request_queue_size": 64})
        try:
            self.server = server_class(where, _Handler)
        except OSError as exc:
            raise EdgefpError(f"cannot open the sample socket at {address}: {exc.strerror}") from None
        self.server.agent, self.server.daemon_threads = agent, True
        self.server.count_lock, self.server.connections = threading.Lock(), 0
        bound = self.server.server_address
        self.address = bound if isinstance(bound, str) else f"{bound[0]}:{bound[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
        if isinstance(self.server.server_address, str) and os.path.exists(self.server.server_address):
            os.remove(self.server.server_address)

    def __enter__(self) -> SampleServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file nothing listens on any more (an agent that was killed); refuse anything else."""
    if not os.path.lexists(path):
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise EdgefpError(f"{path} exists and is not a socket; choose another path for the sample socket")
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.remove(path)
            return
    raise EdgefpError(f"an agent already listens at {path}")


class SampleClient:
    """The sensor side in Python: ``SampleClient(address).classify(window)`` -> the agent's verdict."""

    def __init__(self, address: str, timeout: float = 10.0):
        family, where = _parse(address)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(where)
        except OSError as exc:
            self.sock.close()
            raise EdgefpError(f"cannot reach the agent's sample socket at {address}: {exc.strerror or exc}") from None
        self.stream = self.sock.makefile("rwb")

    def classify(self, window) -> dict:
        """Send one window; the answer is a dict (``ood``, ``score``, ``label``...), or EdgefpError."""
        values = np.ascontiguousarray(window, dtype="<f4").ravel()
        try:
            self.stream.write(struct.pack("<I", values.size) + values.tobytes())
            self.stream.flush()
            line = self.stream.readline()
        except OSError as exc:
            raise EdgefpError(f"the agent closed the sample socket ({exc.strerror or exc})") from None
        if not line:
            raise EdgefpError(
                f"the agent closed the sample socket (it stopped, or serves {MAX_CLIENTS} programs already)"
            )
        answer = json.loads(line)
        if "error" in answer:
            raise EdgefpError(f"the agent refused the window: {answer['error']}")
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a window the agent did not take any more is dropped
            self.stream.close()
        self.sock.close()

    def __enter__(self) -> SampleClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
