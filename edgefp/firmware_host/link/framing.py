"""Frames on a byte stream (docs/protocol.md, Framing): COBS, a CRC-32 and a 0x00 delimiter.

``payload = type:u8 | seq:u16 | body | crc:u32`` (little-endian), sent as ``COBS(payload) | 0x00``.
:class:`FrameReader` turns any stream of bytes into frames and faults; it never raises on garbage.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

DELIMITER = b"\x00"
HEADER = struct.Struct("<BH")
CRC = struct.Struct("<I")
OVERHEAD = HEADER.size + CRC.size  # type, seq and CRC around every body
MIN_FRAME, MAX_FRAME = 512, 65536  # limits of a device's max frame (payload bytes)


class FrameError(ValueError):
    """Bytes that are not a frame (bad COBS, too short, CRC mismatch)."""


class Frame(NamedTuple):
    type: int
    seq: int
    body: bytes


class Fault(NamedTuple):
    """A frame the reader dropped: ``oversized`` (with the type and seq read from its start) or corrupt."""

    oversized: bool
    type: int
    seq: int


def cobs_encode(data: bytes) -> bytes:
    out = bytearray()
    for piece in bytes(data).split(b"\x00"):
        while len(piece) >= 254:
            out += b"\xff" + piece[:254]
            piece = piece[254:]
        out.append(len(piece) + 1)
        out += piece
    return bytes(out)


def cobs_decode(data: bytes, *, partial: bool = False) -> bytes:
    """Decode COBS; ``partial`` accepts a truncated last block (to read the start of a dropped frame)."""
    out, i, n = bytearray(), 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FrameError("zero byte inside a COBS frame")
        if i + code > n and not partial:
            raise FrameError("COBS block runs past the end of the frame")
        out += data[i + 1 : i + code]
        i += code
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


def encoded_limit(max_frame: int) -> int:
    """The most bytes (delimiter excluded) that a payload of ``max_frame`` bytes encodes to."""
    return max_frame + -(-max_frame // 254) + 1


def encode_frame(type_: int, seq: int, body: bytes = b"") -> bytes:
    """One frame on the wire, delimiter included."""
    head = HEADER.pack(type_, seq) + bytes(body)
    return cobs_encode(head + CRC.pack(zlib.crc32(head))) + DELIMITER


def decode_frame(encoded: bytes) -> Frame:
    """The frame in ``encoded`` (without its delimiter), or FrameError."""
    payload = cobs_decode(encoded)
    if len(payload) < OVERHEAD:
        raise FrameError(f"frame of {len(payload)} bytes is shorter than {OVERHEAD}")
    (crc,) = CRC.unpack_from(payload, len(payload) - CRC.size)
    if zlib.crc32(payload[: -CRC.size]) != crc:
        raise FrameError("CRC mismatch")
    type_, seq = HEADER.unpack_from(payload)
    return Frame(type_, seq, payload[HEADER.size : -CRC.size])


class FrameReader:
    """Collects bytes into frames: ``feed(data)`` returns the Frames and Faults completed by ``data``.

    Empty frames are skipped; corrupt ones become ``Fault(False, 0, 0)``; a frame growing past
    ``max_frame`` payload bytes is discarded up to the next delimiter and becomes ``Fault(True, type, seq)``.
    """

    def __init__(self, max_frame: int = MAX_FRAME):
        self.limit = encoded_limit(max_frame)
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[Frame | Fault]:
        out = []
        data = bytes(data)
        while data:
            end = data.find(DELIMITER)
            piece, data = (data, b"") if end < 0 else (data[:end], data[end + 1 :])
            if not self._discarding:
                self._buffer += piece
                if len(self._buffer) > self.limit:
                    out.append(self._oversized())
            if end >= 0:
                if self._buffer and not self._discarding:
                    try:
                        out.append(decode_frame(bytes(self._buffer)))
                    except FrameError:
                        out.append(Fault(False, 0, 0))
                self._buffer.clear()
                self._discarding = False
        return out

    def _oversized(self) -> Fault:
        start = cobs_decode(bytes(self._buffer[:8]), partial=True)
        self._buffer.clear()
        self._discarding = True
        if len(start) < HEADER.size:
            return Fault(True, 0, 0)
        return Fault(True, *HEADER.unpack_from(start))
