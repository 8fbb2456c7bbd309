"""The device protocol's tables and message bodies (docs/protocol.md): one enum of message types, one of
error codes, and pack/unpack for every body. Unpacking a malformed body raises BodyError, nothing else.
"""

from __future__ import annotations

import re
import struct
from dataclasses import astuple, dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

from edgefp.firmware_host.link.framing import MAX_FRAME, MIN_FRAME

if TYPE_CHECKING:  # imported where it is used: a HELLO needs no numpy ('edgefp info' starts faster)
    import numpy as np

VERSION = 1
RESPONSE = 0x80  # response type = request type | RESPONSE
NAME_MAX = 32  # names in HELLO are cut to this many bytes, so that it fits the smallest frame
NO_SLOT = 0xFF
MESSAGE_MAX = 1024  # bytes of an ERROR message
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


class Msg(IntEnum):
    HELLO = 0x01
    AUTH = 0x02
    MANIFEST = 0x03
    UPLOAD_BEGIN = 0x10
    UPLOAD_CHUNK = 0x11
    UPLOAD_END = 0x12
    ACTIVATE = 0x13
    INFER = 0x20
    BENCH = 0x21
    INFER_OUTPUTS = 0x22
    EVENTS = 0x30
    GET_COUNTERS = 0x31
    GET_OOD = 0x32
    READ_LOG = 0x33
    RESET = 0x3F
    EVENT = 0xFE
    ERROR = 0xFF


class Err(IntEnum):
    BAD_FRAME = 0x01
    UNKNOWN_TYPE = 0x02
    BAD_LENGTH = 0x03
    FRAME_TOO_LARGE = 0x04
    NO_BUNDLE = 0x10
    BAD_INPUT_SHAPE = 0x11
    HASH_MISMATCH = 0x12
    INVALID_BUNDLE = 0x13
    DOES_NOT_FIT = 0x14
    BAD_STATE = 0x15
    OUT_OF_RANGE = 0x16
    UNSUPPORTED_OP = 0x17
    OVER_LIMIT = 0x18
    AUTH_REQUIRED = 0x20
    AUTH_FAILED = 0x21
    BAD_SIGNATURE = 0x22
    ROLLBACK = 0x23
    INTERNAL = 0x7F


class SlotState(IntEnum):
    EMPTY = 0
    RECEIVING = 1
    VERIFIED = 2
    ACTIVE = 3


def type_name(type_: int) -> str:
    base = type_ if type_ in (Msg.EVENT, Msg.ERROR) else type_ & ~RESPONSE
    return Msg(base).name if base in Msg._value2member_map_ else f"0x{type_:02x}"


def error_name(code: int) -> str:
    return Err(code).name if code in Err._value2member_map_ else f"error 0x{code:02x}"


def one_line(text: str) -> str:
    """Text from the other side made safe to show: control characters (newlines, escapes) become spaces."""
    return _CONTROL.sub(" ", text).strip()


class BodyError(ValueError):
    """A body too short, too long or malformed for its message type (answered with BAD_LENGTH)."""


class Reader:
    """Reads little-endian fields from a body; BodyError when it runs out or has bytes left over."""

    def __init__(self, body: bytes):
        self.body, self.pos = bytes(body), 0

    def take(self, fmt: str):
        try:
            values = struct.unpack_from("<" + fmt, self.body, self.pos)
        except struct.error:
            raise BodyError(f"body of {len(self.body)} bytes is too short") from None
        self.pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def many(self, code: str, count: int) -> list:
        raw = self.raw(struct.calcsize(code) * count)
        return list(struct.unpack(f"<{count}{code}", raw))

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.body):
            raise BodyError(f"body of {len(self.body)} bytes is too short")
        self.pos += n
        return self.body[self.pos - n : self.pos]

    def str8(self) -> str:
        return one_line(self.raw(self.take("B")).decode("utf-8", "replace"))

    def rest(self) -> bytes:
        out, self.pos = self.body[self.pos :], len(self.body)
        return out

    def done(self) -> None:
        if self.pos != len(self.body):
            raise BodyError(f"body has {len(self.body) - self.pos} bytes too many")


def unpack(fmt: str, body: bytes):
    """A body that is exactly one fixed struct."""
    reader = Reader(body)
    values = reader.take(fmt)
    reader.done()
    return values


def str8(text: str, limit: int = 255) -> bytes:
    raw = text.encode()[:limit]
    return bytes([len(raw)]) + raw


@dataclass
class Slot:
    state: SlotState = SlotState.EMPTY
    size: int = 0
    sha256: bytes = b"\0" * 32
    name: str = ""

    def to_dict(self) -> dict:
        return {"state": self.state.name.lower(), "bytes": self.size, "sha256": self.sha256.hex(), "name": self.name}


@dataclass
class Hello:
    max_frame: int
    firmware: str
    board: str
    runtime: str
    flash_bytes: int
    ram_bytes: int
    slots: list[Slot]
    auth_required: bool = False
    challenge: bytes = bytes(16)
    version: int = VERSION

    @property
    def active(self) -> Slot | None:
        return next((slot for slot in self.slots if slot.state == SlotState.ACTIVE), None)

    def pack(self) -> bytes:
        active = next((i for i, slot in enumerate(self.slots) if slot.state == SlotState.ACTIVE), NO_SLOT)
        out = struct.pack("<HIB", self.version, self.max_frame, int(self.auth_required)) + self.challenge
        out += str8(self.firmware, NAME_MAX) + str8(self.board, NAME_MAX) + str8(self.runtime, NAME_MAX)
        out += struct.pack("<QQBB", self.flash_bytes, self.ram_bytes, active, len(self.slots))
        for slot in self.slots:
            out += struct.pack("<BI", slot.state, slot.size) + slot.sha256 + str8(slot.name, NAME_MAX)
        return out

    @classmethod
    def unpack(cls, body: bytes) -> Hello:
        r = Reader(body)
        version, max_frame, flags = r.take("HIB")
        challenge, firmware, board, runtime = r.raw(16), r.str8(), r.str8(), r.str8()
        flash, ram, _active, n_slots = r.take("QQBB")
        slots = []
        for _ in range(n_slots):
            state, size = r.take("BI")
            if state not in SlotState._value2member_map_:
                raise BodyError(f"unknown slot state {state}")
            slots.append(Slot(SlotState(state), size, r.raw(32), r.str8()))
        r.done()
        if not MIN_FRAME <= max_frame <= MAX_FRAME:
            raise BodyError(f"max frame {max_frame} is outside {MIN_FRAME} to {MAX_FRAME}")
        return cls(max_frame, firmware, board, runtime, flash, ram, slots, bool(flags & 1), challenge, version)

    def to_dict(self) -> dict:
        active = self.active
        return {
            "protocol": self.version,
            "firmware": self.firmware,
            "board": self.board,
            "runtime": self.runtime,
            "flash_bytes": self.flash_bytes,
            "ram_bytes": self.ram_bytes,
            "max_frame": self.max_frame,
            "auth_required": self.auth_required,
            "active": active.to_dict() if active else None,
            "slots": [slot.to_dict() for slot in self.slots],
        }


@dataclass
class InferResult:
    pred: int  # index into the manifest's labels
    probs: np.ndarray  # (C,) int8
    errors: np.ndarray  # (L,) int8
    score: float
    ood: bool
    latency_us: int

    def pack(self) -> bytes:
        import numpy as np

        probs, errors = np.asarray(self.probs, np.int8), np.asarray(self.errors, np.int8)
        return (
            struct.pack("<BB", self.pred, len(probs))
            + probs.tobytes()
            + struct.pack("<B", len(errors))
            + errors.tobytes()
            + struct.pack("<fBI", self.score, int(self.ood), self.latency_us)
        )

    @classmethod
    def unpack(cls, body: bytes) -> InferResult:
        import numpy as np

        r = Reader(body)
        pred, n_classes = r.take("BB")
        probs = np.frombuffer(r.raw(n_classes), np.int8)
        errors = np.frombuffer(r.raw(r.take("B")), np.int8)
        score, verdict, latency = r.take("fBI")
        r.done()
        return cls(pred, probs, errors, score, bool(verdict), latency)


def unpack_outputs(body: bytes, specs: list) -> tuple[list[np.ndarray], int]:
    """An INFER_OUTPUTS answer: every model output as the manifest's ``outputs.raw`` describes it (one
    sample: no batch axis; ``specs``: :class:`edgefp.manifest.Output`), and the device's latency in us."""
    import numpy as np

    r = Reader(body)
    latency = r.take("I")
    outputs = []
    for spec in specs:
        wire = np.dtype(spec.dtype).newbyteorder("<")
        values = np.frombuffer(r.raw(int(np.prod(spec.shape, dtype=np.int64)) * wire.itemsize), wire)
        outputs.append(values.astype(spec.dtype).reshape(spec.shape))
    r.done()
    return outputs, latency


STATS = ("mean", "std", "min", "max", "p50", "p90", "p99")


@dataclass
class BenchResult:
    init_ms: float
    first_us: float
    runs: int
    warmup: int
    stats: dict  # STATS -> microseconds, over all runs
    latencies_us: list[float]  # the first runs, as many as fit in a frame

    def pack(self, max_body: int) -> bytes:
        head = struct.pack("<ffII7f", self.init_ms, self.first_us, self.runs, self.warmup, *map(self.stats.get, STATS))
        count = min(len(self.latencies_us), (max_body - len(head) - 4) // 4)
        return head + struct.pack(f"<I{count}f", count, *self.latencies_us[:count])

    @classmethod
    def unpack(cls, body: bytes) -> BenchResult:
        r = Reader(body)
        init_ms, first_us, runs, warmup, *stats = r.take("ffII7f")
        latencies = r.many("f", r.take("I"))
        r.done()
        return cls(init_ms, first_us, runs, warmup, dict(zip(STATS, stats)), latencies)


@dataclass
class Event:
    timestamp_ms: int
    input: int
    pred: int
    score: float
    ood: bool
    latency_us: int

    FORMAT = "IIBfBI"

    def pack(self) -> bytes:
        return struct.pack("<" + self.FORMAT, *self.fields())

    def fields(self) -> tuple:
        return (self.timestamp_ms, self.input, self.pred, self.score, int(self.ood), self.latency_us)

    @classmethod
    def unpack(cls, body: bytes) -> Event:
        timestamp, number, pred, score, verdict, latency = unpack(cls.FORMAT, body)
        return cls(timestamp, number, pred, score, bool(verdict), latency)


@dataclass
class Counters:
    inputs: int = 0
    ood: int = 0
    window: int = 0
    window_inputs: int = 0
    window_ood_rate: float = 0.0
    buffered: int = 0
    capacity: int = 0

    FORMAT = "IIIIfII"

    def pack(self) -> bytes:
        return struct.pack("<" + self.FORMAT, *astuple(self))

    @classmethod
    def unpack(cls, body: bytes) -> Counters:
        return cls(*unpack(cls.FORMAT, body))


@dataclass
class OodSample:
    input: int
    timestamp_ms: int
    pred: int
    score: float
    x: bytes = field(repr=False)

    def pack(self) -> bytes:
        return struct.pack("<IIBf", self.input, self.timestamp_ms, self.pred, self.score) + self.x

    @classmethod
    def unpack(cls, body: bytes) -> OodSample:
        r = Reader(body)
        return cls(*r.take("IIBf"), r.rest())


class DataKind(IntEnum):
    """What a logged input's data holds."""

    INT8 = 0  # the int8 input tensor (an INFER request)
    RAW = 1  # the raw float32 values, before preprocessing (the device's own sensor or application)


@dataclass
class LogEntry:
    """One input of the device's sample log: its number, when, the verdict, and its data."""

    input: int
    timestamp_ms: int
    result: InferResult
    kind: DataKind
    data: bytes = field(repr=False)


@dataclass
class LogPage:
    """READ_LOG's answer: the log's state, and the first entry after the one asked for (data from ``offset``)."""

    session: int  # changes whenever input numbering starts over
    first: int  # the oldest input the log holds (seen + 1 when it holds none)
    seen: int  # inputs seen, the newest number
    capacity: int  # inputs the log holds at most
    entry: LogEntry | None = None  # with the piece of its data from ``offset``
    total: int = 0  # bytes of the entry's data in all

    HEAD = "IIIIB"

    def pack(self, offset: int = 0, max_body: int = 1 << 30) -> bytes:
        head = struct.pack("<" + self.HEAD, self.session, self.first, self.seen, self.capacity, self.entry is not None)
        if self.entry is None:
            return head
        entry = self.entry
        head += struct.pack("<II", entry.input, entry.timestamp_ms) + entry.result.pack()
        head += struct.pack("<BI", entry.kind, len(entry.data))
        return head + entry.data[offset : offset + max(0, max_body - len(head))]

    @classmethod
    def unpack(cls, body: bytes) -> LogPage:
        import numpy as np

        r = Reader(body)
        session, first, seen, capacity, found = r.take(cls.HEAD)
        page = cls(session, first, seen, capacity)
        if not found:
            r.done()
            return page
        number, timestamp = r.take("II")
        pred, n_classes = r.take("BB")
        probs = np.frombuffer(r.raw(n_classes), np.int8)
        errors = np.frombuffer(r.raw(r.take("B")), np.int8)
        score, verdict, latency = r.take("fBI")
        kind, page.total = r.take("BI")
        if kind not in DataKind._value2member_map_:
            raise BodyError(f"unknown data kind {kind}")
        result = InferResult(pred, probs, errors, score, bool(verdict), latency)
        page.entry = LogEntry(number, timestamp, result, DataKind(kind), r.rest())
        return page


def pack_read_log(after: int, ood_only: bool, offset: int = 0) -> bytes:
    return struct.pack("<IBI", after, int(ood_only), offset)


def pack_error(code: Err, request_type: int, message: str) -> bytes:
    text = one_line(message).encode()[:MESSAGE_MAX].decode("utf-8", "ignore")
    return struct.pack("<BB", code, request_type & 0xFF) + text.encode()


def unpack_error(body: bytes) -> tuple[int, int, str]:
    r = Reader(body)
    code, request_type = r.take("BB")
    return code, request_type, one_line(r.rest()[:MESSAGE_MAX].decode("utf-8", "replace"))


def pack_upload_begin(total: int, sha256: bytes, name: str) -> bytes:
    return struct.pack("<I", total) + sha256 + str8(name)


def unpack_upload_begin(body: bytes) -> tuple[int, bytes, str]:
    r = Reader(body)
    total, sha256, name = r.take("I"), r.raw(32), r.str8()
    r.done()
    return total, sha256, name


def unpack_offset_data(body: bytes) -> tuple[int, bytes]:
    """UPLOAD_CHUNK's request and MANIFEST's response: a u32 then bytes."""
    r = Reader(body)
    return r.take("I"), r.rest()
