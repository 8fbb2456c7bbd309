"""Framing and message bodies of the device protocol: round trips, and garbage never raises."""

import random
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from edgefp.firmware_host.link import framing, protocol
from edgefp.firmware_host.link.framing import Fault, Frame, FrameError, FrameReader
from edgefp.firmware_host.link.protocol import BodyError, Msg


@pytest.mark.parametrize("size", [0, 1, 253, 254, 255, 508, 1000, 4096])
def test_cobs_round_trip_and_no_zero(size):
    rng = random.Random(size)
    for zeros in (0.0, 0.1, 1.0):
        data = bytes(0 if rng.random() < zeros else rng.randrange(1, 256) for _ in range(size))
        encoded = framing.cobs_encode(data)
        assert 0 not in encoded
        assert len(encoded) <= framing.encoded_limit(size)
        assert framing.cobs_decode(encoded) == data


def test_cobs_known_vectors():
    assert framing.cobs_encode(b"\x00") == b"\x01\x01"
    assert framing.cobs_encode(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"
    assert framing.cobs_encode(bytes(range(1, 255))) == b"\xff" + bytes(range(1, 255)) + b"\x01"


def test_frame_layout_matches_the_documentation():
    wire = framing.encode_frame(0x20, 0x1234, b"\x05")
    assert wire.endswith(b"\x00")
    payload = framing.cobs_decode(wire[:-1])
    assert payload[:4] == b"\x20\x34\x12\x05"
    assert payload[4:] == struct.pack("<I", zlib.crc32(b"\x20\x34\x12\x05"))
    assert framing.decode_frame(wire[:-1]) == Frame(0x20, 0x1234, b"\x05")


def test_reader_splits_resynchronises_and_drops_corrupt_frames():
    one, two = framing.encode_frame(1, 1, b"abc"), framing.encode_frame(2, 2, bytes(300))
    corrupt = bytearray(framing.encode_frame(3, 3, b"xyz"))
    corrupt[3] ^= 0x40
    stream = b"garbage\x00\x00" + one + bytes(corrupt) + two
    reader = FrameReader()
    out = [item for i in range(0, len(stream), 7) for item in reader.feed(stream[i : i + 7])]
    assert out == [Fault(False, 0, 0), Frame(1, 1, b"abc"), Fault(False, 0, 0), Frame(2, 2, bytes(300))]


def test_reader_reports_oversized_frames_with_their_seq_and_recovers():
    reader = FrameReader(max_frame=256)
    big = framing.encode_frame(0x11, 77, bytes(range(1, 256)) * 2)
    out = reader.feed(big + framing.encode_frame(1, 78))
    assert out == [Fault(True, 0x11, 77), Frame(1, 78, b"")]
    assert reader.feed(b"\x01" * 1000) == [Fault(True, 0, 0)]
    assert reader.feed(b"\x01" * 1000 + b"\x00" + framing.encode_frame(1, 79)) == [Frame(1, 79, b"")]


def test_random_garbage_never_raises():
    rng = random.Random(0)
    reader = FrameReader(max_frame=256)
    for _ in range(2000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        for item in reader.feed(data):
            assert isinstance(item, (Frame, Fault))
        try:
            framing.decode_frame(data)
        except FrameError:
            pass


def test_hello_round_trip_fits_its_limit():
    slot = protocol.Slot(protocol.SlotState.ACTIVE, 51200, bytes(range(32)), "x" * 100)
    slots = [slot, protocol.Slot(name="y" * 99)]
    hello = protocol.Hello(4096, "f" * 99, "n" * 100, "r" * 99, 1 << 20, 256 << 10, slots)
    body = hello.pack()
    assert len(body) + framing.OVERHEAD <= framing.MIN_FRAME
    back = protocol.Hello.unpack(body)
    assert back.active.name == "x" * protocol.NAME_MAX and back.slots[1].state == protocol.SlotState.EMPTY
    assert back.to_dict()["active"]["sha256"] == bytes(range(32)).hex()


def test_bodies_round_trip():
    result = protocol.InferResult(3, np.array([-128, 5, 127], np.int8), np.array([1, -2], np.int8), 0.25, True, 37)
    back = protocol.InferResult.unpack(result.pack())
    assert (back.pred, back.score, back.ood, back.latency_us) == (3, 0.25, True, 37)
    assert back.probs.tolist() == [-128, 5, 127] and back.errors.tolist() == [1, -2]
    stats = dict.fromkeys(protocol.STATS, 1.5)
    bench = protocol.BenchResult(2.0, 40.0, 2000, 10, stats, [12.5] * 2000)
    packed = bench.pack(max_body=4085)
    assert len(packed) <= 4085
    back = protocol.BenchResult.unpack(packed)
    assert back.stats == stats and 0 < len(back.latencies_us) < 2000 and back.runs == 2000
    for item in (protocol.Event(1, 2, 3, 0.5, False, 9), protocol.Counters(5, 1, 100, 4, 0.25, 1, 16)):
        assert type(item).unpack(item.pack()) == item
    sample = protocol.OodSample(4, 5, 1, 2.5, b"\x01\x02")
    assert protocol.OodSample.unpack(sample.pack()) == sample
    assert protocol.unpack_error(protocol.pack_error(protocol.Err.DOES_NOT_FIT, 0x12, "too big")) == (
        0x14,
        0x12,
        "too big",
    )
    assert protocol.unpack_upload_begin(protocol.pack_upload_begin(9, bytes(32), "b")) == (9, bytes(32), "b")


def test_truncated_or_padded_bodies_raise_only_body_error():
    bodies = [protocol.Hello(256, "f", "b", "r", 1, 2, [protocol.Slot()]).pack(), protocol.Counters().pack()]
    bodies.append(protocol.InferResult(0, np.zeros(2, np.int8), np.zeros(1, np.int8), 0.0, False, 1).pack())
    parsers = [protocol.Hello.unpack, protocol.Counters.unpack, protocol.InferResult.unpack]
    for body, parse in zip(bodies, parsers):
        for bad in (body[:-1], body + b"\x00", b""):
            with pytest.raises(BodyError):
                parse(bad)
    rng = random.Random(1)
    for _ in range(500):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
        for parse in parsers + [protocol.BenchResult.unpack, protocol.Event.unpack, protocol.unpack_upload_begin]:
            try:
                parse(junk)
            except BodyError:
                pass


def test_names_of_types_and_codes():
    assert protocol.type_name(Msg.INFER | protocol.RESPONSE) == "INFER"
    assert protocol.type_name(Msg.ERROR) == "ERROR" and protocol.type_name(0x55) == "0x55"
    assert protocol.error_name(0x14) == "DOES_NOT_FIT" and protocol.error_name(0x99) == "error 0x99"


def test_device_modules_import_without_tensorflow():
    code = (
        "import sys; from edgefp.firmware_host.device import agent; "
        "from edgefp.firmware_host.link import client, framing, protocol, transport; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tflite_micro')))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
