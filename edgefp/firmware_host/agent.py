"""The device side of the protocol: what `edgefp agent` runs on a Raspberry Pi or Coral, and what
`edgefp sim` runs as a board.

Bundles live in two fixed slots in the data directory (``slot0.efp``, ``slot1.efp``) and an ``active``
file names the active one. An upload goes to the other slot as ``slotN.efp.partial``, is checked
(SHA-256, bundle verification, board fit, the runtime can run it), renamed into place, and becomes
active when ``active`` is replaced by a rename: an interruption anywhere leaves the last good bundle
served. Names sent by the host never reach the filesystem.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import hmac
import json
import os
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass

import numpy as np

import edgefp
from edgefp.bench import bench_bundle
from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError
from edgefp.firmware_host import protocol
from edgefp.firmware_host.boards import Board, fit_problems, get_board
from edgefp.firmware_host.framing import DELIMITER, OVERHEAD, Fault, Frame, FrameReader, encode_frame
from edgefp.firmware_host.protocol import RESPONSE, Err, Msg, Slot, SlotState
from edgefp.firmware_host.transport import SocketPort, open_pty, read_some

SLOTS = 2
ACTIVE_FILE = "active"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
POLL_S = 0.05


class Refusal(Exception):
    """A request the agent answers with an error code."""

    def __init__(self, code: Err, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Loaded:
    """A verified bundle ready to run."""

    bundle: Bundle
    interpreter: object
    sha256: bytes
    size: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.bundle.manifest["input"]["shape"])

    @property
    def dtype(self) -> np.dtype:
        """int8, or float32 for a wrapped model that takes floats."""
        return np.dtype(self.bundle.manifest["input"].get("dtype", "int8"))

    @functools.cached_property
    def manifest_json(self) -> bytes:
        return json.dumps(self.bundle.manifest, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Upload:
    slot: int
    total: int
    sha256: bytes
    handle: object
    digest: object
    received: int = 0


class Agent:
    """A device: bundles in ``data_dir``, inference on ``board``'s runtime, the protocol on any port."""

    def __init__(self, data_dir: str, board: Board | str = "pi", *, max_frame: int = 4096, key: bytes | None = None):
        self.data_dir, self.max_frame, self.key = data_dir, max_frame, key
        self.board = get_board(board) if isinstance(board, str) else board
        self.lock = threading.RLock()  # one request or sensor input at a time
        self.started = time.monotonic()
        self.slots = [Slot() for _ in range(SLOTS)]
        self.active: Loaded | None = None
        self.counters = protocol.Counters(window=100, capacity=32)
        self._window: collections.deque[bool] = collections.deque(maxlen=self.counters.window)
        self._ood: collections.deque[protocol.OodSample] = collections.deque(maxlen=self.counters.capacity)
        self._upload: Upload | None = None
        self._verified: tuple[int, Loaded] | None = None  # the last upload verified, ready to activate
        self._last: tuple[tuple[int, int], bytes] | None = None
        self._port = None
        self._events = self._authed = False
        self._challenge = bytes(16)
        os.makedirs(data_dir, exist_ok=True)
        self._load()

    # ------------------------------------------------------------------------------- storage
    def _path(self, slot: int, partial: bool = False) -> str:
        return os.path.join(self.data_dir, f"slot{slot}.efp" + (".partial" if partial else ""))

    def _load(self) -> None:
        """(Re)start: drop partial uploads, and serve the active slot, else the other one if it verifies."""
        self._abort_upload()
        for slot in range(SLOTS):
            if os.path.exists(self._path(slot, partial=True)):
                os.remove(self._path(slot, partial=True))
        try:
            with open(os.path.join(self.data_dir, ACTIVE_FILE)) as handle:
                pointer = int(handle.read().strip())
        except (OSError, ValueError):
            pointer = 0
        self.active, self.slots = None, [Slot() for _ in range(SLOTS)]
        for slot in sorted(range(SLOTS), key=lambda s: s != pointer):
            if not os.path.exists(self._path(slot)):
                continue
            try:
                loaded = self._prepare(self._path(slot))
            except Refusal:
                continue
            self.slots[slot] = self._slot(SlotState.VERIFIED, loaded)
            if self.active is None:
                self.active, self.slots[slot].state = loaded, SlotState.ACTIVE
        self._clear_counters()

    @staticmethod
    def _slot(state: SlotState, loaded: Loaded) -> Slot:
        return Slot(state, loaded.size, loaded.sha256, loaded.bundle.manifest["name"])

    def _prepare(self, path: str) -> Loaded:
        """Check a bundle archive for this board and open its interpreter, or refuse it."""
        with open(path, "rb") as handle:
            content = handle.read()
        try:
            bundle = Bundle.read(path)
        except EdgefpError as exc:
            raise Refusal(Err.INVALID_BUNDLE, str(exc).replace(path, "the upload")) from None
        problems = bundle.problems()
        if problems:
            raise Refusal(Err.INVALID_BUNDLE, f"the bundle does not verify: {problems[0]}")
        manifest = bundle.manifest
        arena = manifest.get("tflm_arena_bytes") if self.board.runtime == "tflm" else None
        from edgefp.runtime import ArenaError, open_runtime

        try:  # TFLite Micro is only handed the manifest's arena once it has been seen to suffice
            interpreter = open_runtime(bundle.model_bytes, self.board.runtime, arena_bytes=arena)
        except ArenaError as exc:
            raise Refusal(Err.INVALID_BUNDLE, str(exc)) from None
        except EdgefpError as exc:
            raise Refusal(Err.UNSUPPORTED_OP, str(exc)) from None
        problems = fit_problems(self.board, len(bundle.model_bytes), arena)
        if bundle.input_bytes + OVERHEAD > self.max_frame:
            problems.append(f"its input of {bundle.input_bytes} bytes does not fit a {self.max_frame}-byte frame")
        if bundle.raw_output_bytes + 4 + OVERHEAD > self.max_frame:
            problems.append(f"its outputs of {bundle.raw_output_bytes} bytes do not fit a {self.max_frame}-byte frame")
        if problems:
            raise Refusal(Err.DOES_NOT_FIT, "; ".join(problems))
        return Loaded(bundle, interpreter, hashlib.sha256(content).digest(), len(content))

    def _abort_upload(self) -> None:
        if self._upload:
            self._upload.handle.close()
            os.remove(self._path(self._upload.slot, partial=True))
            self.slots[self._upload.slot] = Slot()
            self._upload = None

    def _clear_counters(self) -> None:
        self.counters.inputs = self.counters.ood = 0
        self._window.clear()
        self._ood.clear()

    # ------------------------------------------------------------------------------- running
    @property
    def bundle(self) -> Bundle | None:
        return self.active.bundle if self.active else None

    def observe(self, x_q: np.ndarray) -> protocol.InferResult:
        """Run one int8 input as a sensor reading (counted, buffered when OOD, sent as an event)."""
        with self.lock:
            if self.active is None:
                raise EdgefpError("no bundle is active on this device; flash one first")
            return self._run(np.asarray(x_q, dtype=self.active.dtype).reshape(self.active.shape))[0]

    def _run(self, x_q: np.ndarray) -> tuple[protocol.InferResult, list[np.ndarray]]:
        """One input: the result INFER answers (without a fingerprint: the argmax of the first output,
        never OOD) and every raw output."""
        loaded = self.active
        start = time.perf_counter_ns()
        outputs = loaded.interpreter.invoke(x_q)
        latency = (time.perf_counter_ns() - start) // 1000
        if not loaded.bundle.fingerprinted:
            pred = min(int(np.argmax(outputs[0])), 255)
            result = protocol.InferResult(pred, np.zeros(0, np.int8), np.zeros(0, np.int8), 0.0, False, int(latency))
        else:
            probs, errors = loaded.bundle.split_outputs(outputs)
            scores = loaded.bundle.decide(probs[None], errors[None])
            result = protocol.InferResult(
                int(np.argmax(probs)), probs, errors, float(scores.ood_score[0]), bool(scores.is_ood[0]), int(latency)
            )
        counters, now = self.counters, self._now_ms()
        counters.inputs += 1
        counters.ood += result.ood
        self._window.append(result.ood)
        if result.ood:
            self._ood.appendleft(protocol.OodSample(counters.inputs, now, result.pred, result.score, x_q.tobytes()))
        if self._events and self._port is not None:
            event = protocol.Event(now, counters.inputs, result.pred, result.score, result.ood, result.latency_us)
            try:
                self._port.write(DELIMITER + encode_frame(Msg.EVENT, 0, event.pack()))
            except OSError:  # the host went away: the reading still counts, the subscription ends
                self._events = False
        return result, outputs

    def _now_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000) & 0xFFFFFFFF

    def _require_active(self) -> Loaded:
        if self.active is None:
            raise Refusal(Err.NO_BUNDLE, "no bundle is active; flash one first")
        return self.active

    # ------------------------------------------------------------------------------- protocol
    def serve(self, port, stop: threading.Event | None = None) -> None:
        """Answer frames from a pyserial-like ``port`` until it closes or ``stop`` is set; never raises on
        what arrives (garbage gets error notices). Events and authentication last one call."""
        port.timeout = 0
        reader = FrameReader(self.max_frame)
        with self.lock:
            self._port, self._events, self._authed = port, False, False
        try:
            while not (stop and stop.is_set()):
                for item in reader.feed(read_some(port, POLL_S)):
                    with self.lock:
                        port.write(DELIMITER + self.respond(item))
        except OSError:
            pass  # the other side went away
        finally:
            with self.lock:
                self._port = None

    def respond(self, item: Frame | Fault) -> bytes:
        """The frame answering one received frame (or fault); duplicates get the kept answer again."""
        if isinstance(item, Fault):
            if item.oversized:
                return self._error(
                    item.seq, item.type, Err.FRAME_TOO_LARGE, f"frames are at most {self.max_frame} bytes"
                )
            return self._error(0, 0, Err.BAD_FRAME, "a frame did not decode or failed its CRC")
        key = (item.seq, zlib.crc32(struct.pack("<BH", item.type, item.seq) + item.body))
        if item.type != Msg.HELLO and self._last and self._last[0] == key:
            return self._last[1]
        try:
            if self.key is not None and not self._authed and item.type not in (Msg.HELLO, Msg.AUTH):
                raise Refusal(Err.AUTH_REQUIRED, "this device requires AUTH with its shared key")
            handler = self._handlers.get(item.type)
            if handler is None:
                raise Refusal(Err.UNKNOWN_TYPE, f"unknown request type 0x{item.type:02x}")
            reply = encode_frame(item.type | RESPONSE, item.seq, handler(self, item.body))
        except Refusal as exc:
            reply = self._error(item.seq, item.type, exc.code, str(exc))
        except protocol.BodyError as exc:
            reply = self._error(item.seq, item.type, Err.BAD_LENGTH, str(exc))
        except Exception as exc:  # noqa: BLE001 - a device answers, whatever went wrong
            reply = self._error(item.seq, item.type, Err.INTERNAL, f"{type(exc).__name__}: {exc}")
        self._last = None if item.type == Msg.HELLO else (key, reply)
        return reply

    @staticmethod
    def _error(seq: int, type_: int, code: Err, message: str) -> bytes:
        return encode_frame(Msg.ERROR, seq, protocol.pack_error(code, type_, message))

    @property
    def _max_body(self) -> int:
        return self.max_frame - OVERHEAD

    def _hello(self, body: bytes) -> bytes:
        protocol.unpack("H", body)
        self._authed = False
        self._challenge = os.urandom(16) if self.key is not None else bytes(16)
        return protocol.Hello(
            self.max_frame,
            f"edgefp-agent {edgefp.__version__}",
            self.board.name,
            self.board.runtime,
            self.board.flash_bytes,
            self.board.ram_bytes,
            self.slots,
            auth_required=self.key is not None,
            challenge=self._challenge,
        ).pack()

    def _auth(self, body: bytes) -> bytes:
        mac = protocol.Reader(body).raw(32)
        if self.key is not None:
            expected = hmac.new(self.key, self._challenge, hashlib.sha256).digest()
            self._challenge = os.urandom(16)  # one try per HELLO
            if not hmac.compare_digest(mac, expected):
                raise Refusal(Err.AUTH_FAILED, "wrong key; send HELLO and try again")
        self._authed = True
        return b""

    def _manifest(self, body: bytes) -> bytes:
        offset = protocol.unpack("I", body)
        content = self._require_active().manifest_json
        return struct.pack("<I", len(content)) + content[offset : offset + self._max_body - 4]

    def _upload_begin(self, body: bytes) -> bytes:
        total, digest, _name = protocol.unpack_upload_begin(body)
        room = min(self.board.flash_bytes, 1 << 30) + (1 << 20)  # the model, plus room for its manifest
        if total > room:
            raise Refusal(Err.DOES_NOT_FIT, f"the archive needs {total - room} bytes more storage than this device has")
        self._abort_upload()
        inactive = [s for s in range(SLOTS) if self.slots[s].state != SlotState.ACTIVE]
        slot = min(inactive, key=lambda s: self.slots[s].state != SlotState.EMPTY)  # an empty slot first
        self.slots[slot] = Slot(SlotState.RECEIVING, total)
        handle = open(self._path(slot, partial=True), "wb")
        self._upload = Upload(slot, total, digest, handle, hashlib.sha256())
        return struct.pack("<I", self._max_body - 4)

    def _upload_chunk(self, body: bytes) -> bytes:
        offset, data = protocol.unpack_offset_data(body)
        upload = self._upload
        if upload is None:
            raise Refusal(Err.BAD_STATE, "no upload in progress; send UPLOAD_BEGIN first")
        if offset != upload.received:
            raise Refusal(Err.BAD_STATE, f"chunk at offset {offset}, expected {upload.received}")
        if offset + len(data) > upload.total:
            raise Refusal(Err.BAD_STATE, f"chunk runs past the {upload.total} bytes announced")
        upload.handle.write(data)
        upload.digest.update(data)
        upload.received += len(data)
        return struct.pack("<I", upload.received)

    def _upload_end(self, body: bytes) -> bytes:
        protocol.Reader(body).done()
        upload = self._upload
        if upload is None or upload.received != upload.total:
            done = f"{upload.received} of {upload.total} bytes" if upload else "no upload"
            raise Refusal(Err.BAD_STATE, f"the upload is not complete ({done})")
        upload.handle.flush()
        os.fsync(upload.handle.fileno())
        try:
            if upload.digest.digest() != upload.sha256:
                raise Refusal(
                    Err.HASH_MISMATCH,
                    f"received bytes have SHA-256 {upload.digest.hexdigest()[:16]}..., "
                    f"announced {upload.sha256.hex()[:16]}...; upload again",
                )
            loaded = self._prepare(self._path(upload.slot, partial=True))
        except Refusal:
            self._abort_upload()
            raise
        upload.handle.close()
        os.replace(self._path(upload.slot, partial=True), self._path(upload.slot))
        self._sync_directory()
        self._upload = None
        self.slots[upload.slot] = self._slot(SlotState.VERIFIED, loaded)
        self._verified = (upload.slot, loaded)
        return bytes([upload.slot])

    def _activate(self, body: bytes) -> bytes:
        digest = protocol.Reader(body).raw(32)
        slot = next((s for s, x in enumerate(self.slots) if x.state == SlotState.VERIFIED and x.sha256 == digest), None)
        if slot is None:
            raise Refusal(Err.BAD_STATE, f"no slot holds bundle {digest.hex()[:16]}... verified; upload it first")
        verified = self._verified
        loaded = verified[1] if verified and verified[0] == slot else self._prepare(self._path(slot))
        pointer = os.path.join(self.data_dir, ACTIVE_FILE)
        with open(pointer + ".tmp", "w") as handle:
            handle.write(str(slot))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(pointer + ".tmp", pointer)
        self._sync_directory()
        for other in self.slots:
            if other.state == SlotState.ACTIVE:
                other.state = SlotState.VERIFIED
        self.slots[slot].state, self.active, self._verified = SlotState.ACTIVE, loaded, None
        self._clear_counters()
        return bytes([slot])

    def _sync_directory(self) -> None:
        fd = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _input(self, body: bytes) -> np.ndarray:
        loaded = self._require_active()
        expected = int(np.prod(loaded.shape)) * loaded.dtype.itemsize
        if len(body) != expected:
            raise Refusal(
                Err.BAD_INPUT_SHAPE,
                f"the input has {len(body)} bytes; the model takes {loaded.dtype} {loaded.shape}, {expected} bytes",
            )
        return np.frombuffer(body, dtype=loaded.dtype.newbyteorder("<")).astype(loaded.dtype).reshape(loaded.shape)

    def _infer(self, body: bytes) -> bytes:
        return self._run(self._input(body))[0].pack()

    def _infer_outputs(self, body: bytes) -> bytes:
        result, outputs = self._run(self._input(body))
        specs = self.active.bundle.manifest["outputs"].get("raw")
        dtypes = [spec["dtype"] for spec in specs] if specs else [np.asarray(o).dtype for o in outputs]
        data = b"".join(np.asarray(o).astype(np.dtype(t).newbyteorder("<")).tobytes() for o, t in zip(outputs, dtypes))
        return struct.pack("<I", result.latency_us) + data

    def _bench(self, body: bytes) -> bytes:
        runs, warmup = protocol.unpack("II", body)
        loaded = self._require_active()
        if runs < 1:
            raise Refusal(Err.OUT_OF_RANGE, "runs must be at least 1")
        result = bench_bundle(loaded.bundle, self.board.runtime, runs=runs, warmup=warmup)
        stats = {key: result["latency_us"][key] for key in protocol.STATS}
        return protocol.BenchResult(
            result["init_ms"], result["first_inference_us"], runs, warmup, stats, result["samples_us"]
        ).pack(self._max_body)

    def _events_request(self, body: bytes) -> bytes:
        self._events = bool(protocol.unpack("B", body))
        return b""

    def _get_counters(self, body: bytes) -> bytes:
        protocol.Reader(body).done()
        self.counters.window_inputs = len(self._window)
        self.counters.window_ood_rate = sum(self._window) / len(self._window) if self._window else 0.0
        self.counters.buffered = len(self._ood)
        return self.counters.pack()

    def _get_ood(self, body: bytes) -> bytes:
        index = protocol.unpack("I", body)
        if index >= len(self._ood):
            raise Refusal(Err.OUT_OF_RANGE, f"OOD sample {index} asked, {len(self._ood)} buffered")
        return self._ood[index].pack()

    def _reset(self, body: bytes) -> bytes:
        if protocol.unpack("B", body):
            self._load()
        else:
            self._abort_upload()
            self._clear_counters()
        return b""

    _handlers = {
        Msg.HELLO: _hello,
        Msg.AUTH: _auth,
        Msg.MANIFEST: _manifest,
        Msg.UPLOAD_BEGIN: _upload_begin,
        Msg.UPLOAD_CHUNK: _upload_chunk,
        Msg.UPLOAD_END: _upload_end,
        Msg.ACTIVATE: _activate,
        Msg.INFER: _infer,
        Msg.INFER_OUTPUTS: _infer_outputs,
        Msg.BENCH: _bench,
        Msg.EVENTS: _events_request,
        Msg.GET_COUNTERS: _get_counters,
        Msg.GET_OOD: _get_ood,
        Msg.RESET: _reset,
    }


def listen_tcp(agent: Agent, host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket for :func:`serve_tcp`; beyond loopback only with a shared key."""
    if host not in LOOPBACK and agent.key is None:
        raise EdgefpError(f"listening on {host} lets other machines in: give the agent a shared key (--key)")
    try:
        server = socket.create_server((host, port))
    except OSError as exc:
        raise EdgefpError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return server


def serve_tcp(agent: Agent, server: socket.socket, stop: threading.Event | None = None) -> None:
    """Serve one TCP connection at a time until ``stop`` is set."""
    server.settimeout(POLL_S)
    while not (stop and stop.is_set()):
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        conn.setblocking(True)
        port = SocketPort(conn)
        try:
            agent.serve(port, stop)
        finally:
            port.close()


@contextlib.contextmanager
def serving(agent: Agent, link: str = "pty", tcp_port: int = 0):
    """Serve ``agent`` from a background thread, on a new pty or on TCP at 127.0.0.1; yield the URL a
    host opens. The agent stops serving when the block ends."""
    stop = threading.Event()
    if link == "pty":
        port, url = open_pty()
        thread = threading.Thread(target=agent.serve, args=(port, stop), daemon=True)
    else:
        port = listen_tcp(agent, "127.0.0.1", tcp_port)
        url = f"socket://127.0.0.1:{port.getsockname()[1]}"
        thread = threading.Thread(target=serve_tcp, args=(agent, port, stop), daemon=True)
    thread.start()
    try:
        yield url
    finally:
        stop.set()
        thread.join(10)
        port.close()
