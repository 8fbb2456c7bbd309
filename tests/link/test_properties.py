"""Properties over generated inputs (hypothesis) of the device protocol: frames round-trip and survive
being cut anywhere, any bytes become frames and faults, and the body decoders fail only with BodyError."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgefp.firmware_host.link import framing, protocol

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(type_=st.integers(0, 255), seq=st.integers(0, 65535), body=st.binary(max_size=600))
def test_frames_round_trip_and_survive_being_cut_anywhere(type_, seq, body):
    wire = framing.encode_frame(type_, seq, body)
    assert framing.FrameReader().feed(wire) == [framing.Frame(type_, seq, body)]
    reader = framing.FrameReader(max_frame=framing.MIN_FRAME)
    cut = len(wire) // 2
    fits = len(body) + framing.OVERHEAD <= framing.MIN_FRAME
    expected = framing.Frame(type_, seq, body) if fits else framing.Fault(True, type_, seq)
    assert reader.feed(wire[:cut]) + reader.feed(wire[cut:]) == [expected]


@SETTINGS
@given(st.binary(max_size=2000))
def test_the_frame_reader_turns_any_bytes_into_frames_and_faults(noise):
    reader = framing.FrameReader(max_frame=framing.MIN_FRAME)
    items = reader.feed(noise) + reader.feed(framing.DELIMITER + framing.encode_frame(1, 7, b"ok"))
    assert all(isinstance(item, framing.Frame | framing.Fault) for item in items)
    assert items[-1] == framing.Frame(1, 7, b"ok")  # after a delimiter, whatever came before, frames are read


DECODERS = [
    protocol.Hello.unpack,
    protocol.InferResult.unpack,
    protocol.BenchResult.unpack,
    protocol.Event.unpack,
    protocol.Counters.unpack,
    protocol.OodSample.unpack,
    protocol.unpack_error,
    protocol.unpack_upload_begin,
    protocol.unpack_offset_data,
]


@SETTINGS
@given(decode=st.sampled_from(DECODERS), body=st.binary(max_size=300))
def test_every_body_decoder_fails_only_with_body_error(decode, body):
    try:
        decode(body)
    except protocol.BodyError:
        pass


@SETTINGS
@given(
    probs=hnp.arrays(np.int8, st.integers(1, 40)),
    errors=hnp.arrays(np.int8, st.integers(1, 16)),
    score=st.floats(width=32, allow_nan=False),
    ood=st.booleans(),
    latency=st.integers(0, 2**32 - 1),
)
def test_an_inference_result_survives_the_wire(probs, errors, score, ood, latency):
    result = protocol.InferResult(int(len(probs) - 1), probs, errors, score, ood, latency)
    back = protocol.InferResult.unpack(result.pack())
    assert (back.probs == probs).all() and (back.errors == errors).all()
    assert (back.pred, back.score, back.ood, back.latency_us) == (len(probs) - 1, score, ood, latency)
