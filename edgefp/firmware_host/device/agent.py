"""The device side of the protocol: what `edgefp agent` runs on a Raspberry Pi or Coral, and what
`edgefp sim` runs as a board.

Bundles live in two fixed slots in the data directory (``slot0.efp``, ``slot1.efp``) and an ``active``
file names the active one. An upload goes to the other slot as ``slotN.efp.partial``, is checked
(SHA-256, bundle verification, board fit, the runtime can run it), renamed into place, and becomes
active when ``active`` is replaced by a rename: an interruption anywhere leaves the last good bundle
served. Names sent by the host never reach the filesystem.

An agent given a public key (``trust``) accepts only bundles signed with it (edgefp.signing) and never
one older than the last it activated: the version and manifest hash of that one live in ``signed.json``,
replaced by a rename when a bundle is activated. Uploads, restarts and activations all go through
:meth:`Agent._prepare`, so no way of installing a bundle skips the check.

Each host talks in a :class:`Session` of its own (a TCP connection, or the serial port): its
authentication, its event subscription and the answer it may get again. TCP connections are served
side by side, at most ``MAX_CLIENTS``; one that has not completed its handshake (HELLO, and AUTH on a
keyed agent) within ``HANDSHAKE_S`` seconds is closed, so that no client can lock the others out.
Wrong keys are slowed down per peer address (docs/security.md).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import hmac
import itertools
import json
import os
import shutil
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass

import numpy as np

import edgefp
from edgefp.bench import OverLimit, bench_bundle
from edgefp.bundle import Bundle, sha256
from edgefp.errors import EdgefpError, option
from edgefp.firmware_host.boards import Board, fit_problems, get_board
from edgefp.firmware_host.link import protocol
from edgefp.firmware_host.link.framing import DELIMITER, OVERHEAD, Fault, Frame, FrameReader, encode_frame
from edgefp.firmware_host.link.protocol import RESPONSE, Err, Msg, Slot, SlotState
from edgefp.firmware_host.link.transport import SocketPort, open_pty, read_some
from edgefp.fsutil import write_file_atomic
from edgefp.limits import BENCH_MAX_SECONDS, MAX_FILES_BYTES, MAX_INVOKES, MAX_MANIFEST_BYTES, MIN_KEY_BYTES
from edgefp.manifest import Manifest, ManifestError
from edgefp.runtime import ArenaError
from edgefp.signing import RollbackError, Signature, SignatureError, check, check_version

SLOTS = 2
ACTIVE_FILE = "active"
SIGNED_FILE = "signed.json"  # version and manifest SHA-256 of the last signed bundle activated
LOOPBACK = ("127.0.0.1", "::1", "localhost")
POLL_S = 0.05
LOG_CAPACITY = 4096  # recent inputs kept for READ_LOG (edgefp record)
MAX_CLIENTS = 8  # TCP connections served at once; more are closed at once
HANDSHAKE_S = 5.0  # a TCP connection must complete HELLO (and AUTH on a keyed agent) within this
SEND_TIMEOUT_S = 10.0  # a TCP client that does not read its answers for this long is dropped
AUTH_DELAY_S, AUTH_DELAY_MAX_S = 1.0, 60.0  # after a wrong key, the peer waits 1 s, 2 s, 4 s ... at most 60 s
MAX_PEERS = 4096  # peers whose wrong keys are remembered
ARCHIVE_OVERHEAD = 32 << 10  # tar headers and padding around a bundle's files
EVENTS_QUEUED = 1000  # events waiting for a session that does not read them; older ones are dropped


class Refusal(Exception):
    """A request the agent answers with an error code."""

    def __init__(self, code: Err, message: str):
        super().__init__(message)
        self.code = code


class Session:
    """One host's conversation with the agent: its port and peer, authentication, event subscription
    and the answer kept for a duplicate of its last request."""

    def __init__(self, port, peer: str = "serial"):
        self.port, self.peer = port, peer
        self.authed = self.subscribed = self.ready = False
        self.challenge = bytes(16)
        self.last: tuple[tuple[int, int], bytes] | None = None
        self.outbox: collections.deque[bytes] = collections.deque(maxlen=EVENTS_QUEUED)

    def flush(self) -> None:
        """Send the events queued for this session (from its own thread, never under the agent's lock)."""
        while self.outbox:
            self.port.write(self.outbox.popleft())


@dataclass
class Loaded:
    """A verified bundle ready to run."""

    bundle: Bundle
    interpreter: object
    sha256: bytes
    size: int
    signature: Signature | None = None  # checked against the agent's public key, when it has one

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bundle.manifest.input.shape

    @property
    def dtype(self) -> np.dtype:
        """int8, or float32 for a wrapped model that takes floats."""
        return np.dtype(self.bundle.manifest.input.dtype)

    @functools.cached_property
    def manifest_json(self) -> bytes:
        return json.dumps(self.bundle.manifest.to_json(), sort_keys=True, separators=(",", ":")).encode()


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

    def __init__(
        self,
        data_dir: str,
        board: Board | str = "pi",
        *,
        max_frame: int = 4096,
        key: bytes | None = None,
        log_capacity: int = LOG_CAPACITY,
        trust: bytes | None = None,
    ):
        if key is not None and len(key) < MIN_KEY_BYTES:
            raise EdgefpError(f"the shared key has {len(key)} bytes; give one of at least {MIN_KEY_BYTES}")
        self.data_dir, self.max_frame, self.key, self.trust = data_dir, max_frame, key, trust
        self.board = get_board(board) if isinstance(board, str) else board
        self.lock = threading.RLock()  # one request or sensor input at a time
        self.started = time.monotonic()
        self.slots = [Slot() for _ in range(SLOTS)]
        self.active: Loaded | None = None
        self.counters = protocol.Counters(window=100, capacity=32)
        self._window: collections.deque[bool] = collections.deque(maxlen=self.counters.window)
        self._ood: collections.deque[protocol.OodSample] = collections.deque(maxlen=self.counters.capacity)
        self._log: collections.deque[protocol.LogEntry] = collections.deque(maxlen=log_capacity)
        self.log_session = 0  # changes whenever input numbers start over
        self._upload: Upload | None = None
        self._verified: tuple[int, Loaded] | None = None  # the last upload verified, ready to activate
        self.sessions: set[Session] = set()
        self.listeners: list = []  # listener(result, input number) after each input, under the lock
        self._wrong_keys: dict[str, tuple[int, float]] = {}  # peer -> (wrong keys in a row, next try allowed)
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
        return Slot(state, loaded.size, loaded.sha256, loaded.bundle.manifest.name)

    def _prepare(self, path: str) -> Loaded:
        """Check a bundle archive for this board and open its interpreter, or refuse it."""
        try:
            bundle = Bundle.read(path, before_files=self._check_fit)
        except EdgefpError as exc:
            raise Refusal(Err.INVALID_BUNDLE, str(exc).replace(path, "the upload")) from None
        problems = bundle.problems()
        if problems:
            raise Refusal(Err.INVALID_BUNDLE, f"the bundle does not verify: {problems[0]}")
        signature = self._check_signature(bundle)
        try:
            interpreter = bundle.interpreter(self.board.runtime)
        except (ManifestError, ArenaError) as exc:  # TFLite Micro only gets an arena seen to suffice
            raise Refusal(Err.INVALID_BUNDLE, str(exc).replace(path, "the upload")) from None
        except EdgefpError as exc:
            raise Refusal(Err.UNSUPPORTED_OP, str(exc)) from None
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return Loaded(bundle, interpreter, digest.digest(), os.path.getsize(path), signature)

    def _check_signature(self, bundle: Bundle) -> Signature | None:
        """With a public key: the bundle's signature, refused (BAD_SIGNATURE, ROLLBACK) unless it is signed
        with that key and not older than the last signed bundle activated."""
        if self.trust is None:
            return None
        try:
            found = check(bundle.signature, bundle.manifest_bytes, self.trust)
            check_version(found, bundle.manifest_bytes, self._last_signed())
        except SignatureError as exc:
            raise Refusal(Err.BAD_SIGNATURE, str(exc)) from None
        except RollbackError as exc:
            raise Refusal(Err.ROLLBACK, str(exc)) from None
        return found

    def _last_signed(self) -> tuple[int, bytes] | None:
        """Version and manifest SHA-256 of the last signed bundle activated (None before the first)."""
        try:
            with open(os.path.join(self.data_dir, SIGNED_FILE)) as handle:
                state = json.load(handle)
            return int(state["version"]), bytes.fromhex(state["manifest_sha256"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:  # never fall back to accepting older bundles
            raise Refusal(Err.INTERNAL, f"{SIGNED_FILE} is unreadable ({exc}); restore it") from None

    def _check_fit(self, manifest: Manifest) -> None:
        """Refuse (DOES_NOT_FIT) a bundle whose model, arena, input or outputs do not fit, before its files
        are read."""
        arena = manifest.tflm_arena_bytes if self.board.runtime == "tflm" else None
        problems = fit_problems(self.board, manifest.flash_bytes, arena)
        sizes = Bundle(manifest, {})
        if sizes.input_bytes + OVERHEAD > self.max_frame:
            problems.append(f"its input of {sizes.input_bytes} bytes does not fit a {self.max_frame}-byte frame")
        if sizes.raw_output_bytes + 4 + OVERHEAD > self.max_frame:
            problems.append(f"its outputs of {sizes.raw_output_bytes} bytes do not fit a {self.max_frame}-byte frame")
        if problems:
            raise Refusal(Err.DOES_NOT_FIT, "; ".join(problems))

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
        self._log.clear()
        self.log_session = int.from_bytes(os.urandom(4), "little")

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

    def classify(self, window) -> protocol.LogEntry:
        """One window of raw sensor values (the input shape, or as many values; before preprocessing)
        from the program that owns the sensor: preprocessed and quantised as the host does, run, counted,
        logged, buffered when OOD and sent as an event, as an INFER request is. Returns the log entry."""
        with self.lock:
            if self.active is None:
                raise EdgefpError("no bundle is active on this device; flash one first")
            shape = self.active.shape
            x = np.asarray(window, dtype=np.float32)
            if x.size != int(np.prod(shape)):
                raise EdgefpError(f"a window of {x.size} values; the model takes {shape}, {int(np.prod(shape))} values")
            if not np.isfinite(x).all():
                raise EdgefpError("the window holds NaN or inf; send finite values")
            x = x.reshape(shape)
            self._run(self.active.bundle.quantize(x[None])[0], x)
            return self._log[-1]

    def _run(self, x_q: np.ndarray, raw: np.ndarray | None = None) -> tuple[protocol.InferResult, list[np.ndarray]]:
        """One input (with its raw values when known): the result INFER answers (without a fingerprint:
        the argmax of the first output, never OOD) and every raw output."""
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
        kind, data = (protocol.DataKind.INT8, x_q.tobytes()) if raw is None else (protocol.DataKind.RAW, raw.tobytes())
        self._log.append(protocol.LogEntry(counters.inputs, now, result, kind, data))
        event = protocol.Event(now, counters.inputs, result.pred, result.score, result.ood, result.latency_us)
        frame = DELIMITER + encode_frame(Msg.EVENT, 0, event.pack())
        for session in self.sessions:
            if session.subscribed:
                session.outbox.append(frame)
        for listener in self.listeners:
            listener(result, counters.inputs)
        return result, outputs

    def _now_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000) & 0xFFFFFFFF

    def _require_active(self) -> Loaded:
        if self.active is None:
            raise Refusal(Err.NO_BUNDLE, "no bundle is active; flash one first")
        return self.active

    # ------------------------------------------------------------------------------- protocol
    def serve(self, port, stop: threading.Event | None = None, *, peer: str = "serial", deadline=None) -> None:
        """Answer frames from a pyserial-like ``port`` in a session of its own until the port closes,
        ``stop`` is set, or the session has not completed its handshake by ``deadline`` (monotonic
        seconds); never raises on what arrives (garbage gets error notices)."""
        port.timeout = 0
        reader, session = FrameReader(self.max_frame), Session(port, peer)
        with self.lock:
            self.sessions.add(session)
        try:
            while not (stop and stop.is_set()) and (deadline is None or session.ready or time.monotonic() < deadline):
                for item in reader.feed(read_some(port, POLL_S)):
                    with self.lock:
                        answer = self.respond(item, session)
                    if answer is not None:
                        port.write(DELIMITER + answer)
                session.flush()
        except OSError:
            pass  # the other side went away
        finally:
            with self.lock:
                self.sessions.discard(session)

    def respond(self, item: Frame | Fault, session: Session) -> bytes | None:
        """The frame answering one received frame (or fault) in ``session``, None for a frame with seq 0
        (never a request); duplicates get the kept answer again, only within an authenticated session."""
        if isinstance(item, Fault):
            if item.oversized:
                return self._error(
                    item.seq, item.type, Err.FRAME_TOO_LARGE, f"frames are at most {self.max_frame} bytes"
                )
            return self._error(0, 0, Err.BAD_FRAME, "a frame did not decode or failed its CRC")
        if item.seq == 0:
            return None
        key = (item.seq, zlib.crc32(struct.pack("<BH", item.type, item.seq) + item.body))
        authed = self.key is None or session.authed
        if item.type != Msg.HELLO and authed and session.last and session.last[0] == key:
            return session.last[1]
        try:
            if not authed and item.type not in (Msg.HELLO, Msg.AUTH):
                raise Refusal(Err.AUTH_REQUIRED, "this device requires AUTH with its shared key")
            handler = self._handlers.get(item.type)
            if handler is None:
                raise Refusal(Err.UNKNOWN_TYPE, f"unknown request type 0x{item.type:02x}")
            reply = encode_frame(item.type | RESPONSE, item.seq, handler(self, item.body, session))
        except Refusal as exc:
            reply = self._error(item.seq, item.type, exc.code, str(exc))
        except protocol.BodyError as exc:
            reply = self._error(item.seq, item.type, Err.BAD_LENGTH, str(exc))
        except Exception as exc:  # noqa: BLE001 - a device answers, whatever went wrong
            reply = self._error(item.seq, item.type, Err.INTERNAL, f"{type(exc).__name__}: {exc}")
        session.last = None if item.type == Msg.HELLO else (key, reply)
        return reply

    @staticmethod
    def _error(seq: int, type_: int, code: Err, message: str) -> bytes:
        return encode_frame(Msg.ERROR, seq, protocol.pack_error(code, type_, message))

    @property
    def _max_body(self) -> int:
        return self.max_frame - OVERHEAD

    def _hello(self, body: bytes, session: Session) -> bytes:
        protocol.unpack("H", body)
        session.authed = False
        session.ready = session.ready or self.key is None
        session.challenge = os.urandom(16) if self.key is not None else bytes(16)
        return protocol.Hello(
            self.max_frame,
            f"edgefp-agent {edgefp.__version__}",
            self.board.name,
            self.board.runtime,
            self.board.flash_bytes,
            self.board.ram_bytes,
            self.slots,
            auth_required=self.key is not None,
            challenge=session.challenge,
        ).pack()

    def _auth(self, body: bytes, session: Session) -> bytes:
        mac = protocol.unpack("32s", body)
        if self.key is None:
            return b""
        now = time.monotonic()
        wrong, next_try = self._wrong_keys.get(session.peer, (0, now))
        if now < next_try:
            raise Refusal(Err.AUTH_FAILED, f"too many wrong keys from here; wait {next_try - now:.0f} s, then HELLO")
        expected = hmac.new(self.key, session.challenge, hashlib.sha256).digest()
        session.challenge = os.urandom(16)  # one try per HELLO
        if not hmac.compare_digest(mac, expected):
            if len(self._wrong_keys) >= MAX_PEERS:
                del self._wrong_keys[min(self._wrong_keys, key=lambda peer: self._wrong_keys[peer][1])]
            self._wrong_keys[session.peer] = (wrong + 1, now + min(AUTH_DELAY_S * 2**wrong, AUTH_DELAY_MAX_S))
            raise Refusal(Err.AUTH_FAILED, "wrong key; send HELLO and try again")
        self._wrong_keys.pop(session.peer, None)
        session.authed = session.ready = True
        return b""

    def _manifest(self, body: bytes, session: Session) -> bytes:
        offset = protocol.unpack("I", body)
        content = self._require_active().manifest_json
        return struct.pack("<I", len(content)) + content[offset : offset + self._max_body - 4]

    def _upload_begin(self, body: bytes, session: Session) -> bytes:
        total, digest, _name = protocol.unpack_upload_begin(body)
        room = min(self.board.flash_bytes, MAX_FILES_BYTES) + MAX_MANIFEST_BYTES + ARCHIVE_OVERHEAD
        room = min(room, shutil.disk_usage(self.data_dir).free)
        if total > room:
            raise Refusal(Err.DOES_NOT_FIT, f"the archive needs {total - room} bytes more storage than this device has")
        self._abort_upload()
        inactive = [s for s in range(SLOTS) if self.slots[s].state != SlotState.ACTIVE]
        slot = min(inactive, key=lambda s: self.slots[s].state != SlotState.EMPTY)  # an empty slot first
        self.slots[slot] = Slot(SlotState.RECEIVING, total)
        handle = open(self._path(slot, partial=True), "wb")
        self._upload = Upload(slot, total, digest, handle, hashlib.sha256())
        return struct.pack("<I", self._max_body - 4)

    def _upload_chunk(self, body: bytes, session: Session) -> bytes:
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

    def _upload_end(self, body: bytes, session: Session) -> bytes:
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

    def _activate(self, body: bytes, session: Session) -> bytes:
        digest = protocol.Reader(body).raw(32)
        slot = next((s for s, x in enumerate(self.slots) if x.state == SlotState.VERIFIED and x.sha256 == digest), None)
        if slot is None:
            raise Refusal(Err.BAD_STATE, f"no slot holds bundle {digest.hex()[:16]}... verified; upload it first")
        verified = self._verified
        loaded = verified[1] if verified and verified[0] == slot else self._prepare(self._path(slot))
        if loaded.signature is not None:
            self._check_signature(loaded.bundle)  # another bundle may have been activated since it verified
            state = {"version": loaded.signature.version, "manifest_sha256": sha256(loaded.bundle.manifest_bytes)}
            write_file_atomic(os.path.join(self.data_dir, SIGNED_FILE), json.dumps(state).encode())
        write_file_atomic(os.path.join(self.data_dir, ACTIVE_FILE), str(slot).encode())
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

    def _infer(self, body: bytes, session: Session) -> bytes:
        return self._run(self._input(body))[0].pack()

    def _infer_outputs(self, body: bytes, session: Session) -> bytes:
        result, outputs = self._run(self._input(body))
        specs = self.active.bundle.manifest.outputs.raw
        dtypes = [spec.dtype for spec in specs] if specs else [np.asarray(o).dtype for o in outputs]
        data = b"".join(np.asarray(o).astype(np.dtype(t).newbyteorder("<")).tobytes() for o, t in zip(outputs, dtypes))
        return struct.pack("<I", result.latency_us) + data

    def _bench(self, body: bytes, session: Session) -> bytes:
        runs, warmup = protocol.unpack("II", body)
        loaded = self._require_active()
        if runs < 1:
            raise Refusal(Err.OUT_OF_RANGE, "runs must be at least 1")
        if runs + warmup > MAX_INVOKES:
            raise Refusal(
                Err.OVER_LIMIT, f"runs and warmup add up to {runs + warmup:,}; this device does at most {MAX_INVOKES:,}"
            )
        try:
            result = bench_bundle(
                loaded.bundle, self.board.runtime, runs=runs, warmup=warmup, time_limit_s=BENCH_MAX_SECONDS
            )
        except OverLimit as exc:
            raise Refusal(Err.OVER_LIMIT, str(exc)) from None
        stats = {key: result["latency_us"][key] for key in protocol.STATS}
        return protocol.BenchResult(
            result["init_ms"], result["first_inference_us"], runs, warmup, stats, result["samples_us"]
        ).pack(self._max_body)

    def _events_request(self, body: bytes, session: Session) -> bytes:
        session.subscribed = bool(_flag(protocol.unpack("B", body), "enable"))
        return b""

    def current_counters(self) -> protocol.Counters:
        """The counters as GET_COUNTERS answers them."""
        with self.lock:
            self.counters.window_inputs = len(self._window)
            self.counters.window_ood_rate = sum(self._window) / len(self._window) if self._window else 0.0
            self.counters.buffered = len(self._ood)
            return self.counters

    def _get_counters(self, body: bytes, session: Session) -> bytes:
        protocol.Reader(body).done()
        return self.current_counters().pack()

    def _get_ood(self, body: bytes, session: Session) -> bytes:
        index = protocol.unpack("I", body)
        if index >= len(self._ood):
            raise Refusal(Err.OUT_OF_RANGE, f"OOD sample {index} asked, {len(self._ood)} buffered")
        return self._ood[index].pack()

    def _read_log(self, body: bytes, session: Session) -> bytes:
        after, ood_only, offset = protocol.unpack("IBI", body)
        ood_only = _flag(ood_only, "ood_only")
        log, seen = self._log, self.counters.inputs
        first = log[0].input if log else seen + 1
        page = protocol.LogPage(self.log_session, first, seen, log.maxlen)
        start = max(0, after + 1 - first)  # every input is logged, in order: its place is its number
        page.entry = next((e for e in itertools.islice(log, start, None) if e.result.ood or not ood_only), None)
        return page.pack(offset, self._max_body)

    def _reset(self, body: bytes, session: Session) -> bytes:
        if _flag(protocol.unpack("B", body), "reboot"):
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
        Msg.READ_LOG: _read_log,
        Msg.RESET: _reset,
    }


def _flag(value: int, name: str) -> int:
    """A request's byte that must be 0 or 1 (EVENTS, RESET, READ_LOG's ood_only)."""
    if value > 1:
        raise Refusal(Err.OUT_OF_RANGE, f"{name} must be 0 or 1, not {value}")
    return value


def listen_tcp(agent: Agent, host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket for :func:`serve_tcp`; beyond loopback only with a shared key."""
    if host not in LOOPBACK and agent.key is None:
        raise EdgefpError(f"listening on {host} lets other machines in: give the agent a shared key ({option('key')})")
    if not 0 <= port <= 65535:
        raise EdgefpError(f"port {port} is not a TCP port (0 to 65535)")
    try:
        server = socket.create_server((host, port))
    except OSError as exc:
        raise EdgefpError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return server


def serve_tcp(agent: Agent, server: socket.socket, stop: threading.Event | None = None) -> None:
    """Serve TCP connections side by side (at most MAX_CLIENTS) until ``stop`` is set."""
    server.settimeout(POLL_S)
    threads: set[threading.Thread] = set()
    try:
        while not (stop and stop.is_set()):
            threads = {thread for thread in threads if thread.is_alive()}
            try:
                conn, address = server.accept()
            except TimeoutError:
                continue
            if len(threads) >= MAX_CLIENTS:
                conn.close()
                continue
            thread = threading.Thread(target=_serve_connection, args=(agent, conn, address[0], stop), daemon=True)
            thread.start()
            threads.add(thread)
    finally:
        for thread in threads:
            thread.join(1.0)


def _serve_connection(agent: Agent, conn: socket.socket, peer: str, stop: threading.Event | None) -> None:
    conn.settimeout(SEND_TIMEOUT_S)  # reads wait in select; a send stuck this long ends the connection
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    port = SocketPort(conn)
    try:
        agent.serve(port, stop, peer=peer, deadline=time.monotonic() + HANDSHAKE_S)
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
