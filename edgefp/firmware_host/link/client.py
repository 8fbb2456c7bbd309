"""The host side of the device protocol: a Device that sends requests and gets answers (sequence numbers,
timeouts, retries), and the operations built on it (info, flash, infer, bench, counters, pull_ood).

Layered like esptool: framing -> :class:`Device` (``ESPLoader.command``) -> operations (``cmds.py``),
which take an open Device so that tests and scripts can inject one.
"""

from __future__ import annotations

import collections
import math
import random
import struct
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from edgefp.errors import EdgefpError
from edgefp.firmware_host.boards import BOARDS
from edgefp.firmware_host.link import protocol
from edgefp.firmware_host.link.framing import DELIMITER, MIN_FRAME, OVERHEAD, Frame, FrameReader, encode_frame
from edgefp.firmware_host.link.protocol import RESPONSE, Err, Msg, SlotState
from edgefp.firmware_host.link.transport import read_some
from edgefp.limits import BENCH_MAX_SECONDS, MAX_MANIFEST_BYTES

if TYPE_CHECKING:  # numpy and the bundle code are imported where they are used: 'edgefp info' needs neither
    import numpy as np

    from edgefp.bundle import Bundle
    from edgefp.manifest import Manifest, Output

SLOW_TIMEOUT = 30.0  # verifying an upload, activating it
BENCH_TIMEOUT = 4 * BENCH_MAX_SECONDS + 10.0  # emulated devices count time in instructions: slower
EVENTS_KEPT = 10000
MAX_OOD_SAMPLES = 4096  # OOD samples a device may say it holds
LOGGED_BYTES_PER_INPUT_BYTE = 4  # a logged input: raw float32 values of the largest input a bundle has


class DeviceError(EdgefpError):
    """The device answered a request with ERROR; ``code`` is its :class:`protocol.Err` code."""

    def __init__(self, code: int, request_type: int, message: str):
        self.code = code
        super().__init__(f"device refused {protocol.type_name(request_type)}: {protocol.error_name(code)}: {message}")


class LinkError(EdgefpError):
    """The link failed: the device could not be opened, the link dropped, or no answer came; reconnecting
    may cure it."""


class Device:
    """An open link to a device: ``request(type, body)`` returns the response body or raises.

    Each new request gets the next sequence number; when no answer comes within ``timeout`` seconds
    the same frame is sent again, up to ``retries`` times, and up to ``retries`` more times at once
    when the device reports a damaged frame (it replays its answer to a duplicate). Events that
    arrive meanwhile are kept for :meth:`read_event`.
    """

    def __init__(self, port, *, url: str = "<port>", timeout: float = 1.0, retries: int = 5, key: bytes | None = None):
        self.port, self.url, self.timeout, self.retries, self.key = port, url, timeout, retries, key
        port.timeout = 0
        self.reader = FrameReader()
        self.max_frame = MIN_FRAME
        self.info: protocol.Hello | None = None
        self.seq = random.randrange(1, 0x10000)
        self.bytes_sent = self.bytes_received = self.resent = 0
        self._frames: collections.deque[Frame] = collections.deque()
        self._events: collections.deque[protocol.Event] = collections.deque(maxlen=EVENTS_KEPT)
        self._manifest: tuple[bytes, Manifest] | None = None

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.port.close()

    def request(self, type_: int, body: bytes = b"", *, timeout: float | None = None) -> bytes:
        if len(body) + OVERHEAD > self.max_frame:
            raise EdgefpError(f"{protocol.type_name(type_)} of {len(body)} bytes exceeds the device's frame size")
        self.seq = self.seq % 0xFFFF + 1
        wire = DELIMITER + encode_frame(type_, self.seq, body)
        timeouts = notices = 0
        while True:
            self._write(wire)
            deadline = time.monotonic() + (timeout or self.timeout)
            reply = self._await(self.seq, deadline)
            while reply is False and notices >= self.retries:  # enough resends for damaged frames: just wait
                reply = self._await(self.seq, deadline)
            if isinstance(reply, Frame):
                break
            if reply is False:  # the device dropped a damaged frame: resend at once
                notices += 1
            elif timeouts < self.retries:
                timeouts += 1
            else:
                raise LinkError(
                    f"{self.url}: no answer to {protocol.type_name(type_)} after {timeouts + notices + 1} tries; "
                    "is the device connected and running edgefp?"
                )
            self.resent += 1
        if reply.type == Msg.ERROR:
            code, request_type, message = self.parse(type_, protocol.unpack_error, reply.body)
            raise DeviceError(code, request_type, message)
        if reply.type != type_ | RESPONSE:
            raise EdgefpError(f"{self.url}: the device answered {protocol.type_name(type_)} with type {reply.type}")
        return reply.body

    def call(self, type_: int, body: bytes, parse, *, timeout: float | None = None):
        """A request whose answer is parsed by ``parse`` (a malformed one is one clear EdgefpError)."""
        return self.parse(type_, parse, self.request(type_, body, timeout=timeout))

    def parse(self, type_: int, parse, body: bytes):
        try:
            return parse(body)
        except protocol.BodyError as exc:
            raise EdgefpError(
                f"{self.url}: the device answered {protocol.type_name(type_)} with a malformed body ({exc})"
            ) from None

    def read_event(self, timeout: float) -> protocol.Event | None:
        """The next event (after :func:`subscribe`), or None when none comes within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        self._sort(None)
        while not self._events and time.monotonic() < deadline:
            self._receive(deadline)
            self._sort(None)
        return self._events.popleft() if self._events else None

    def _await(self, seq: int, deadline: float) -> Frame | bool | None:
        """The answer to ``seq``; False when the device reports a damaged frame, None at the deadline."""
        while True:
            reply = self._sort(seq)
            if reply is not None or time.monotonic() >= deadline:
                return reply
            self._receive(deadline)

    def _sort(self, seq: int | None) -> Frame | bool | None:
        """Move received events aside; return the answer to ``seq`` if in, False on a BAD_FRAME notice."""
        while self._frames:
            frame = self._frames.popleft()
            if frame.seq == 0 and frame.type == Msg.EVENT:
                try:
                    self._events.append(protocol.Event.unpack(frame.body))
                except protocol.BodyError:
                    pass
            elif frame.seq == 0 and frame.type == Msg.ERROR and frame.body[:1] == bytes([Err.BAD_FRAME]):
                if seq is not None:
                    return False
            elif frame.seq == seq and seq is not None:
                return frame
        return None

    def _receive(self, deadline: float) -> None:
        try:
            data = read_some(self.port, max(0.0, deadline - time.monotonic()))
        except OSError as exc:
            raise LinkError(f"{self.url}: the link dropped ({exc}); check the cable or the device") from None
        self.bytes_received += len(data)
        self._frames.extend(item for item in self.reader.feed(data) if isinstance(item, Frame))

    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except OSError as exc:
            raise LinkError(f"{self.url}: the link dropped ({exc}); check the cable or the device") from None
        self.bytes_sent += len(data)


def open_device(url: str, *, timeout: float = 1.0, retries: int = 5, key: bytes | None = None, baudrate=115200):
    """Open a device by URL (a serial port, ``socket://host:port``, a pty path) and shake hands."""
    device = Device(open_port(url, baudrate), url=url, timeout=timeout, retries=retries)
    try:
        handshake(device, key)
    except BaseException:
        device.close()
        raise
    return device


def open_port(url: str, baudrate=115200):
    """The pyserial port at ``url``, open; one clear LinkError saying what to do when it cannot be opened."""
    import serial

    try:
        port = serial.serial_for_url(url, baudrate=baudrate, timeout=0)
    except (serial.SerialException, ValueError) as exc:
        text = str(exc)
        if "Permission denied" in text:
            hint = "add yourself to the dialout group (sudo usermod -aG dialout $USER) and log in again"
        elif "No such file" in text or "could not open" in text:
            hint = "check the port with 'edgefp devices'"
        else:
            hint = "check the URL (a serial port, socket://HOST:PORT or a pty path)"
        raise LinkError(f"cannot open {url}: {text}; {hint}") from None
    return port


def handshake(device: Device, key: bytes | None = None) -> protocol.Hello:
    """The first HELLO with the device's key (kept for every later HELLO)."""
    device.key = key
    return hello(device)


def hello(device: Device) -> protocol.Hello:
    """HELLO (refusing another protocol version), then AUTH with the device's key when it asks for it:
    a HELLO ends an authenticated session, so every HELLO the host sends starts a new one."""
    info = device.call(Msg.HELLO, struct.pack("<H", protocol.VERSION), protocol.Hello.unpack)
    if info.version != protocol.VERSION:
        raise EdgefpError(
            f"{device.url}: the device speaks protocol v{info.version}, this edgefp v{protocol.VERSION}; "
            "update the one that is older"
        )
    device.info, device.max_frame = info, info.max_frame
    if info.auth_required:
        if device.key is None:
            raise EdgefpError(f"{device.url}: the device requires a shared key; pass the key it was started with")
        import hashlib  # here and in flash: asking a device what it is needs no OpenSSL
        import hmac

        device.request(Msg.AUTH, hmac.new(device.key, info.challenge, hashlib.sha256).digest())
    return info


def info(device: Device) -> dict:
    """What the device is and holds (HELLO), as JSON-ready data."""
    return {"url": device.url, **hello(device).to_dict()}


def manifest(device: Device) -> Manifest:
    """The active bundle's manifest, read in pieces (kept until the active bundle changes)."""
    active = (device.info or hello(device)).active
    if active is None:
        raise EdgefpError(f"{device.url}: no bundle on the device; flash one with 'edgefp flash BUNDLE'")
    if device._manifest and device._manifest[0] == active.sha256:
        return device._manifest[1]
    content, total = b"", None
    while total is None or len(content) < total:
        size, piece = device.call(Msg.MANIFEST, struct.pack("<I", len(content)), protocol.unpack_offset_data)
        if size > MAX_MANIFEST_BYTES:
            raise EdgefpError(
                f"{device.url}: the device announces a manifest of {size} bytes, over {MAX_MANIFEST_BYTES}"
            )
        expected = min(size - len(content), MIN_FRAME - OVERHEAD - 4)  # a piece fills a frame, or ends the manifest
        if size != (total or size) or len(piece) < expected or len(content) + len(piece) > size:
            raise EdgefpError(f"{device.url}: the device sent its manifest in inconsistent pieces")
        total, content = size, content + piece
    from edgefp.bundle import parse_manifest

    device._manifest = (active.sha256, parse_manifest(content, f"{device.url}: the device's bundle"))
    return device._manifest[1]


def archive_name(archive: bytes) -> str:
    """The bundle name inside ``.efp`` archive bytes (read and checked as any bundle; the device verifies it again)."""
    from edgefp.bundle import Bundle

    return Bundle.from_archive(archive, "the archive").manifest.name


def flash(device: Device, archive: bytes, progress=None) -> dict:
    """Upload ``.efp`` archive bytes in chunks, have the device verify them, and activate them.

    Skipped when the device already runs that bundle; only activated when a slot holds it verified.
    ``progress(done, total)`` is called after each chunk.
    """
    import hashlib

    sha, name = hashlib.sha256(archive).digest(), archive_name(archive)
    start, sent, received = time.monotonic(), device.bytes_sent, device.bytes_received
    state = {slot.sha256: slot.state for slot in hello(device).slots}.get(sha)
    if state != SlotState.ACTIVE:
        if state != SlotState.VERIFIED:
            _upload(device, archive, sha, name, progress)
        device.request(Msg.ACTIVATE, sha, timeout=SLOW_TIMEOUT)
        hello(device)
    return {
        "name": name,
        "sha256": sha.hex(),
        "bytes": len(archive),
        "skipped": state == SlotState.ACTIVE,
        "uploaded": state is None,
        "seconds": time.monotonic() - start,
        "wire_bytes": device.bytes_sent - sent + device.bytes_received - received,
    }


def _upload(device: Device, archive: bytes, sha: bytes, name: str, progress) -> None:
    begin = protocol.pack_upload_begin(len(archive), sha, name)
    chunk = min(device.call(Msg.UPLOAD_BEGIN, begin, _u32), device.max_frame - OVERHEAD - 4)
    if chunk < 1:
        raise EdgefpError(f"{device.url}: the device takes upload chunks of {chunk} bytes")
    for offset in range(0, len(archive), chunk):
        device.request(Msg.UPLOAD_CHUNK, struct.pack("<I", offset) + archive[offset : offset + chunk])
        if progress:
            progress(min(offset + chunk, len(archive)), len(archive))
    device.request(Msg.UPLOAD_END, timeout=SLOW_TIMEOUT)


def _u32(body: bytes) -> int:
    return protocol.unpack("I", body)


def infer(device: Device, x_q: np.ndarray) -> protocol.InferResult:
    """One int8 input (the model's input shape) through the device."""
    import numpy as np

    return device.call(Msg.INFER, np.asarray(x_q, dtype=np.int8).tobytes(), protocol.InferResult.unpack)


def infer_outputs(device: Device, x: np.ndarray, specs: list[Output]) -> tuple[list[np.ndarray], int]:
    """One input (as the model's input takes it) through the device: every output, and the latency."""
    import numpy as np

    body = np.asarray(x).astype(x.dtype.newbyteorder("<")).tobytes()
    return device.call(Msg.INFER_OUTPUTS, body, lambda answer: protocol.unpack_outputs(answer, specs))


def infer_samples(device: Device, x: np.ndarray, progress=None) -> tuple:
    """Raw samples -> (the score file's Scores, device latencies in us): quantised and scored with the
    device's own manifest, so the result equals host scoring on the device's runtime. For a bundle
    without a fingerprint, samples as the model's input takes them -> (wrap.Outputs, latencies)."""
    import numpy as np

    from edgefp.bundle import Bundle

    bundle = Bundle(manifest(device), {}, source=device.url)
    if not bundle.fingerprinted:
        return _infer_outputs(device, bundle, x, progress)
    classes, values = len(bundle.manifest.labels), bundle.evidence_values
    results = []
    for i, sample in enumerate(bundle.quantize(x)):
        result = infer(device, sample)
        if (len(result.probs), len(result.errors)) != (classes, values) or result.pred >= classes:
            raise EdgefpError(
                f"{device.url}: the device answered with {len(result.probs)} classes and {len(result.errors)} "
                f"evidence values, its manifest has {classes} and {values}"
            )
        results.append(result)
        if progress:
            progress(i + 1, len(x))
    if not results:
        raise EdgefpError("no samples to run")
    scores = bundle.decide(np.stack([r.probs for r in results]), np.stack([r.errors for r in results]))
    return scores, np.array([r.latency_us for r in results], dtype=np.int64)


def _infer_outputs(device: Device, bundle: Bundle, x: np.ndarray, progress) -> tuple:
    import numpy as np

    from edgefp.wrap import Outputs

    rows, latencies = [], []
    for i, sample in enumerate(x):
        outputs, latency = infer_outputs(device, sample, bundle.manifest.outputs.raw)
        rows.append(outputs)
        latencies.append(latency)
        if progress:
            progress(i + 1, len(x))
    if not rows:
        raise EdgefpError("no samples to run")
    stacked = [np.stack([row[k] for row in rows]) for k in range(len(rows[0]))]
    return Outputs(stacked), np.array(latencies, dtype=np.int64)


def bench(device: Device, runs: int = 200, warmup: int = 20) -> dict:
    """Time the active model on the device; the result has the schema of ``edgefp bench BUNDLE``."""
    from edgefp import bench as bench_mod

    spec, info = manifest(device), device.info
    result = device.call(
        Msg.BENCH, struct.pack("<II", runs, warmup), protocol.BenchResult.unpack, timeout=BENCH_TIMEOUT
    )
    timings = [result.init_ms, result.first_us, *result.stats.values(), *result.latencies_us]
    if (result.runs, result.warmup) != (runs, warmup) or not result.latencies_us or len(result.latencies_us) > runs:
        raise EdgefpError(f"{device.url}: the device's BENCH answer does not match the request")
    if not all(math.isfinite(value) and value >= 0 for value in timings) or result.stats["mean"] <= 0:
        raise EdgefpError(f"{device.url}: the device's BENCH answer holds impossible timings")
    target = {
        "kind": "device",
        "board": info.board,
        "runtime": info.runtime,
        "bundle": spec.name,
        "url": device.url,
        "label": f"{spec.name} on {info.runtime}, {info.board} at {device.url}",
    }
    summary = bench_mod.summarize(
        result.latencies_us,
        target=target,
        warmup=result.warmup,
        init_ms=result.init_ms,
        first_inference_us=result.first_us,
        model_bytes=spec.flash_bytes,
        arena_bytes=spec.tflm_arena_bytes if info.runtime == "tflm" else None,
    )
    if len(result.latencies_us) < result.runs:  # statistics over every run, not only those that fit a frame
        summary.update(runs=result.runs, latency_us=result.stats, throughput_per_s=1e6 / result.stats["mean"])
    board = BOARDS.get(info.board)
    if board is not None and board.instructions_per_us:  # an instruction-counted emulator: time is instructions
        rate = board.instructions_per_us
        summary["instructions"] = {key: value * rate for key, value in summary["latency_us"].items()}
    return summary


def counters(device: Device) -> dict:
    return asdict(device.call(Msg.GET_COUNTERS, b"", protocol.Counters.unpack))


def pull_ood(device: Device) -> list[dict]:
    """The device's recent OOD inputs, most recent first: int8 input (model shape), score, prediction;
    each once. A device that goes on running inputs meanwhile moves its buffer (newest first) under the
    reads: a sample read already means it moved, and the reads skip ahead, twice as far each time, until
    they reach samples not read yet."""
    import numpy as np

    shape = list(manifest(device).input.shape)
    buffered = counters(device)["buffered"]
    if buffered > MAX_OOD_SAMPLES:
        raise EdgefpError(f"{device.url}: the device says it holds {buffered} OOD samples, over {MAX_OOD_SAMPLES}")
    samples, seen, index, skip = [], set(), 0, 1
    for _ in range(2 * buffered):
        try:
            sample = device.call(Msg.GET_OOD, struct.pack("<I", index), protocol.OodSample.unpack)
        except DeviceError as exc:
            if exc.code == Err.OUT_OF_RANGE:  # the end of the buffer
                break
            raise
        if len(sample.x) != math.prod(shape):
            raise EdgefpError(f"{device.url}: the device sent an OOD sample of {len(sample.x)} bytes, not {shape}")
        if sample.input in seen:  # the buffer moved: this one was read already
            index, skip = index + skip, skip * 2
            continue
        index, skip = index + 1, 1
        seen.add(sample.input)
        x = np.frombuffer(sample.x, dtype=np.int8).reshape(shape)
        samples.append({**asdict(sample), "x": x})
        if len(samples) == buffered:
            break
    samples.sort(key=lambda sample: -sample["input"])
    return samples


def read_log(device: Device, after: int, ood_only: bool = False) -> protocol.LogPage:
    """The device's sample log: its state, and the first input numbered above ``after`` (only flagged
    ones with ``ood_only``) with all its data, read in pieces when it exceeds a frame."""
    from edgefp.manifest import MAX_INPUT_BYTES

    max_logged = LOGGED_BYTES_PER_INPUT_BYTE * MAX_INPUT_BYTES
    page = device.call(Msg.READ_LOG, protocol.pack_read_log(after, ood_only), protocol.LogPage.unpack)
    entry = page.entry
    if page.first > page.seen + 1 or (entry and not (max(after, page.first - 1) < entry.input <= page.seen)):
        raise EdgefpError(f"{device.url}: the device's READ_LOG answer does not match its own log or the request")
    if entry is not None and page.total > max_logged:
        raise EdgefpError(f"{device.url}: the device announces an input of {page.total} bytes, over {max_logged}")
    while entry is not None and len(entry.data) < page.total:
        more = device.call(
            Msg.READ_LOG, protocol.pack_read_log(entry.input - 1, False, len(entry.data)), protocol.LogPage.unpack
        )
        if more.entry is None or more.entry.input != entry.input or not more.entry.data:
            raise EdgefpError(f"{device.url}: input {entry.input} left the device's log while it was read")
        entry.data += more.entry.data
    if entry is not None and len(entry.data) != page.total:
        raise EdgefpError(f"{device.url}: input {entry.input} came with {len(entry.data)} bytes, not {page.total}")
    return page


def subscribe(device: Device, enable: bool = True) -> None:
    """Have the device send an event after every inference (read them with ``device.read_event``)."""
    device.request(Msg.EVENTS, bytes([int(enable)]))


def reset(device: Device, reboot: bool = False) -> None:
    device.request(Msg.RESET, bytes([int(reboot)]), timeout=SLOW_TIMEOUT if reboot else None)
