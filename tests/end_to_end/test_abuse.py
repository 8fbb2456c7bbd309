"""Fuzz and abuse, seeded and bounded: random and mutated frames against the agent (with and without a key)
and the C firmware, mutated manifests and archives against the commands that read bundles and against both
devices, and hostile values for the command line's options. Each class prints its cases and outcomes (pytest -s).

Invariants: nothing raises past its boundary (a device answers every request with seq != 0 with one
frame of that seq; a command exits 0, 1 or 2 with one error line, never a traceback); a device that
accepts a bundle can run it; the agent and the firmware accept and refuse the same manifests; after
the abuse, the device still gives exactly the host's results. The seed is in ``EDGEFP_FUZZ_SEED``;
``EDGEFP_FUZZ_SCALE`` multiplies the case counts for a longer hunt (the suite runs at 1, in about a minute).
"""

import collections
import contextlib
import copy
import hashlib
import os
import random
import struct
import time

import numpy as np
import pytest
import serial

from edgefp import data
from edgefp.bundle import Bundle
from edgefp.firmware_host.device import agent as agent_module
from edgefp.firmware_host.device.agent import Agent, Session, serving
from edgefp.firmware_host.firmware.build import build
from edgefp.firmware_host.firmware.launch import start_native
from edgefp.firmware_host.link import client, protocol
from edgefp.firmware_host.link.client import DeviceError
from edgefp.firmware_host.link.framing import DELIMITER, Fault, Frame, FrameReader, decode_frame, encode_frame
from edgefp.firmware_host.link.protocol import Err, Msg
from tests.conftest import KEY, edited_archive
from tests.firmware.test_build import HAS_NATIVE
from tests.test_bundle_safety import run_cli

SEED = int(os.environ.get("EDGEFP_FUZZ_SEED", "20240612"))
SCALE = float(os.environ.get("EDGEFP_FUZZ_SCALE", "1"))
KNOWN_ERRORS = set(Err)
BENCH_CAP_S = 0.02  # the devices' BENCH time cap while fuzzing (5 s normally)
DIGEST_ONLY = "refused: manifest digest"  # a rule of the host and the agent only (docs/security.md)


def scaled(count: int) -> int:
    return max(1, round(count * SCALE))


def summary(title: str, counts: collections.Counter) -> None:
    print(f"\n{title}: {sum(counts.values())} cases: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))


# ------------------------------------------------------------------------------------------ mutators
class Mutator:
    """Seeded mutations of bytes, request frames and JSON documents."""

    EDGES = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def bytes(self, content: bytes) -> bytes:
        content, rng = bytearray(content), self.rng
        for _ in range(rng.choice([1, 1, 2, 4])):
            kind = rng.randrange(7)
            at = rng.randrange(len(content) + 1)
            if kind == 0 and content:  # flip a bit
                content[at % len(content)] ^= 1 << rng.randrange(8)
            elif kind == 1 and content:  # an edge value in place of a u8/u32
                width = rng.choice([1, 4])
                value = rng.choice(self.EDGES) & ((1 << (8 * width)) - 1)
                content[at : at + width] = value.to_bytes(width, "little")
            elif kind == 2:  # cut
                content = content[:at]
            elif kind == 3:  # grow
                content[at:at] = os.urandom(rng.choice([1, 4, 64, 700]))
            elif kind == 4 and content:  # repeat a slice
                length = rng.randrange(1, 64)
                content[at:at] = content[at : at + length]
            elif kind == 5:  # a frame delimiter inside
                content[at:at] = b"\x00"
            else:  # random bytes over a stretch
                length = rng.randrange(1, 32)
                content[at : at + length] = os.urandom(length)
        return bytes(content)

    def value(self):
        deep = 0
        for _ in range(self.rng.choice([3, 20])):
            deep = [deep]
        return self.rng.choice(
            [None, True, False, 0, -1, 1, 255, 256, -129, 2**31, 2**63, -(2**63), 2**64, 1e308, -1e308,
             float("nan"), float("inf"), 0.0, -0.0, 1e-300, 0.5, "", "x", "int8", "none", "a" * 300, "../x",
             [], [0], [0] * 256, [1.0] * 101, {}, {"a": 1}, deep]
        )  # fmt: skip

    def json(self, document):
        """A copy of ``document`` with one place changed: a value replaced, a key removed or added, a list
        entry repeated or dropped."""
        document = copy.deepcopy(document)
        parent, key = None, None
        node = document
        while isinstance(node, (dict, list)) and node and (parent is None or self.rng.random() < 0.7):
            parent, key = node, self.rng.choice(list(node) if isinstance(node, dict) else range(len(node)))
            node = parent[key]
        kind = self.rng.randrange(5)
        if parent is None:
            return self.value()
        if kind == 0 and isinstance(parent, dict):
            del parent[key]
        elif kind == 1 and isinstance(parent, dict):
            parent["extra_" + str(self.rng.randrange(100))] = self.value()
        elif kind == 2 and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif kind == 3 and isinstance(parent, list):
            del parent[key]
        else:
            parent[key] = self.value()
        return document


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def bundle(digits_bundle):
    return Bundle.load(digits_bundle[1])


@pytest.fixture(scope="module")
def corpus(bundle):
    """Valid requests to mutate: (type, body)."""
    archive = bundle.archive_bytes()
    x_q = bundle.quantize(data.load("digits:test:0-4").x[:4])
    sha = hashlib.sha256(archive).digest()
    return [
        (Msg.HELLO, struct.pack("<H", 1)),
        (Msg.AUTH, bytes(32)),
        (Msg.MANIFEST, struct.pack("<I", 0)),
        (Msg.MANIFEST, struct.pack("<I", 4000)),
        (Msg.UPLOAD_BEGIN, protocol.pack_upload_begin(len(archive), sha, "digits04")),
        (Msg.UPLOAD_CHUNK, struct.pack("<I", 0) + archive[:1024]),
        (Msg.UPLOAD_END, b""),
        (Msg.ACTIVATE, sha),
        *[(Msg.INFER, x.tobytes()) for x in x_q],
        *[(Msg.INFER_OUTPUTS, x.tobytes()) for x in x_q[:2]],
        (Msg.BENCH, struct.pack("<II", 3, 1)),
        (Msg.EVENTS, b"\x01"),
        (Msg.EVENTS, b"\x00"),
        (Msg.GET_COUNTERS, b""),
        (Msg.GET_OOD, struct.pack("<I", 0)),
        (Msg.READ_LOG, protocol.pack_read_log(0, False)),
        (Msg.READ_LOG, protocol.pack_read_log(1, True, 8)),
        (Msg.RESET, b"\x00"),
    ]


def fuzzed_requests(mutator: Mutator, corpus, count: int):
    """``count`` (type, seq, body): random ones, mutated valid ones, and valid ones between them."""
    rng = mutator.rng
    for _ in range(count):
        roll = rng.random()
        seq = 0 if rng.random() < 0.05 else rng.choice([rng.randrange(1, 0x10000), 1, 0xFFFF])  # 0: never a request
        if roll < 0.25:
            yield rng.randrange(256), seq, os.urandom(rng.choice([0, 1, 2, 4, 8, 32, 64, 300]))
        elif roll < 0.85:
            type_, body = rng.choice(corpus)
            yield (rng.randrange(256) if rng.random() < 0.1 else type_), seq, mutator.bytes(body)
        else:
            type_, body = rng.choice(corpus)
            yield type_, seq, body


def check_answer(answer: Frame, type_: int, seq: int, counts: collections.Counter) -> None:
    assert answer.seq == seq, (type_, seq, answer)
    if answer.type == Msg.ERROR:
        code, request_type, message = protocol.unpack_error(answer.body)
        assert code in KNOWN_ERRORS and request_type == type_ and "\n" not in message, (type_, code, message)
        assert code != Err.INTERNAL, (type_, message)
        counts[f"ERROR {protocol.error_name(code)}"] += 1
    else:
        assert answer.type == type_ | 0x80, (type_, answer.type)
        counts[f"{protocol.type_name(type_)} answered"] += 1


def assert_serves_like_the_host(url: str, bundle: Bundle, runtime: str) -> None:
    x = data.load("digits:test:0-4").x[:20]
    with client.open_device(url) as device:
        client.reset(device)
        client.flash(device, bundle.archive_bytes())
        scores, _ = client.infer_samples(device, x)
    np.testing.assert_array_equal(scores.layer_errors, bundle.score(x, runtime).layer_errors)


@pytest.fixture(scope="module")
def capped_firmware():
    """The native firmware with a 20-ms BENCH time cap, so that fuzzed BENCH counts cost little."""
    if not HAS_NATIVE:
        pytest.skip("building the firmware needs gcc and make")
    return build("native", cflags=f"-DEFP_BENCH_MAX_US={int(BENCH_CAP_S * 1e6)}")


# ------------------------------------------------------------------------------------------ frames
def test_fuzzed_frames_against_the_agent(tmp_path, monkeypatch, bundle, corpus):
    monkeypatch.setattr(agent_module, "BENCH_MAX_SECONDS", BENCH_CAP_S)
    agent, session, counts = Agent(str(tmp_path), "pi"), Session(None), collections.Counter()
    with serving(agent) as url, client.open_device(url) as device:
        client.flash(device, bundle.archive_bytes())
    mutator = Mutator(SEED)
    started = time.monotonic()
    for type_, seq, body in fuzzed_requests(mutator, corpus, scaled(4000)):
        answer = agent.respond(Frame(type_, seq, body), session)
        if seq == 0:
            assert answer is None
            counts["seq 0 ignored"] += 1
            continue
        check_answer(decode_frame(answer[:-1]), type_, seq, counts)
    reader = FrameReader(agent.max_frame)
    for _ in range(scaled(300)):  # the byte stream itself: garbage, cut frames, oversized frames
        wire = mutator.bytes(DELIMITER + encode_frame(*mutator.rng.choice(corpus)[:1], 1, os.urandom(10)))
        for item in reader.feed(wire + (b"\x01" * mutator.rng.choice([0, 6000]))):
            answer = decode_frame(agent.respond(item, session)[:-1])
            counts["stream: " + ("fault answered" if isinstance(item, Fault) else "frame answered")] += 1
            assert (
                answer.type in (Msg.ERROR, item.type | 0x80)
                if not isinstance(item, Fault)
                else answer.type == Msg.ERROR
            )
    summary(f"agent, fuzzed frames (seed {SEED}, {time.monotonic() - started:.1f} s)", counts)
    with serving(agent) as url:
        assert_serves_like_the_host(url, bundle, "litert")


def test_fuzzed_frames_against_a_keyed_agent(tmp_path, corpus):
    """Without the key, whatever the frames, nothing but HELLO and AUTH gets more than AUTH_REQUIRED."""
    agent, session, counts = Agent(str(tmp_path), "pi", key=KEY), Session(None, "192.0.2.1"), collections.Counter()
    started = time.monotonic()
    for type_, seq, body in fuzzed_requests(Mutator(SEED + 5), corpus, scaled(1500)):
        reply = agent.respond(Frame(type_, seq, body), session)
        if seq == 0:
            assert reply is None
            counts["seq 0 ignored"] += 1
            continue
        answer = decode_frame(reply[:-1])
        check_answer(answer, type_, seq, counts)
        if type_ not in (Msg.HELLO, Msg.AUTH):
            assert answer.type == Msg.ERROR and answer.body[0] == Err.AUTH_REQUIRED, (type_, answer)
    assert not session.authed
    summary(f"keyed agent, fuzzed frames (seed {SEED + 5}, {time.monotonic() - started:.1f} s)", counts)


def test_fuzzed_frames_against_the_firmware(tmp_path, bundle, corpus, capped_firmware):
    mutator, counts = Mutator(SEED + 1), collections.Counter()
    with start_native(capped_firmware, str(tmp_path / "flash.bin")) as native:
        with client.open_device(native.url) as device:
            client.flash(device, bundle.archive_bytes())
        port = serial.serial_for_url(native.url, timeout=0)
        reader, started = FrameReader(), time.monotonic()
        try:
            for type_, seq, body in fuzzed_requests(mutator, corpus, scaled(2500)):
                if seq == 0 or (type_ == Msg.RESET and body[:1] not in (b"\x00",)):
                    continue  # no answer to wait for; a reboot is tested elsewhere
                port.write(DELIMITER + encode_frame(type_, seq, body))
                answer = await_answer(port, reader, seq, native)
                if answer is None:  # over the max frame: dropped with a notice
                    counts["ERROR FRAME_TOO_LARGE or BAD_FRAME notice"] += 1
                    continue
                check_answer(answer, type_, seq, counts)
            for _ in range(200):  # read as it answers: a pty holds a few KB each way, as a UART's buffers
                port.write(mutator.bytes(os.urandom(mutator.rng.choice([1, 100, 3000]))))
                time.sleep(0.002)
                port.read(65536)
            counts["stream: garbage chunks"] += 200
        finally:
            port.close()
        assert native.process.poll() is None
        summary(f"firmware, fuzzed frames (seed {SEED + 1}, {time.monotonic() - started:.1f} s)", counts)
        assert_serves_like_the_host(native.url, bundle, "tflm")


def await_answer(port, reader: FrameReader, seq: int, native) -> Frame | None:
    """The frame answering ``seq``; None when the device sent a seq-0 notice (a dropped frame) instead."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for item in reader.feed(port.read(65536)):
            if isinstance(item, Frame) and item.seq == seq and item.type != Msg.EVENT:
                return item
            if isinstance(item, Frame) and item.seq == 0 and item.type == Msg.ERROR:
                code = item.body[0]
                if code in (Err.FRAME_TOO_LARGE, Err.BAD_FRAME):
                    return None
        time.sleep(0.0005)
    assert native.process.poll() is None, f"the firmware died (status {native.process.poll()})"
    raise AssertionError(f"no answer to seq {seq}")


# ------------------------------------------------------------------------------------------ bundles
def mutated_bundles(bundle: Bundle, seed: int, count: int):
    """(kind, archive bytes): manifests mutated in one place and re-digested, or archives mutated as bytes."""
    mutator, archive = Mutator(seed), bundle.archive_bytes()
    for i in range(count):
        if i % 3 == 2:
            yield "archive bytes", mutator.bytes(archive)
        else:
            yield "manifest", edited_archive(mutator.json(bundle.manifest.to_json()), bundle.files)


def test_mutated_bundles_against_the_commands(tmp_path, bundle):
    counts, started = collections.Counter(), time.monotonic()
    device = Agent(str(tmp_path / "device"), "pi")
    with serving(device) as url:
        for i, (kind, content) in enumerate(mutated_bundles(bundle, SEED + 2, scaled(240))):
            path = tmp_path / f"m{i}.efp"
            path.write_bytes(content)
            commands = [["inspect", path], ["repo", "add", path, "--repo", tmp_path / "repo", "--name", f"m{i}"]]
            if i % 4 == 0:  # the slower ones on a share of the cases
                commands += [["score", path, "--data", "digits:test:0-4"], ["flash", path, "--port", url],
                             ["export-c", path, "--out", tmp_path / f"c{i}"]]  # fmt: skip
            for args in commands:
                code, err = run_cli(*args)
                assert "Traceback" not in err and code in (0, 1, 2), (kind, args, err)
                if code == 2:
                    assert err.strip().splitlines()[-1].startswith("edgefp: error: "), err
                counts[f"{args[0]}: exit {code}"] += 1
        with client.open_device(url) as link:
            active = client.hello(link).active
    assert active is None or active.name  # whatever was flashed verified there
    summary(f"commands, mutated bundles (seed {SEED + 2}, {time.monotonic() - started:.1f} s)", counts)


def test_mutated_bundles_against_both_devices(tmp_path, monkeypatch, bundle, capped_firmware):
    """The agent and the firmware accept and refuse the same bundles, and run whatever they accept. (The
    manifest's own digest is checked by the agent only: a byte changed in it is refused there alone.)"""
    monkeypatch.setattr(agent_module, "BENCH_MAX_SECONDS", BENCH_CAP_S)
    counts, verdicts, started = collections.Counter(), {}, time.monotonic()
    x_q = bundle.quantize(data.load("digits:test:0-4").x[:2])
    cases = list(mutated_bundles(bundle, SEED + 3, scaled(150)))
    with contextlib.ExitStack() as stack:
        devices = {
            "agent": stack.enter_context(serving(Agent(str(tmp_path / "agent"), "pi"))),
            "firmware": stack.enter_context(start_native(capped_firmware, str(tmp_path / "f.bin"))).url,
        }
        for kind, url in devices.items():
            with client.open_device(url) as device:
                client.flash(device, bundle.archive_bytes())
                for i, (_, content) in enumerate(cases):
                    verdicts[kind, i] = upload_and_run(device, content, x_q)
                    counts[f"{kind}: {verdicts[kind, i]}"] += 1
            assert_serves_like_the_host(url, bundle, "litert" if kind == "agent" else "tflm")
    differ = [i for i in range(len(cases)) if verdicts["agent", i] not in (verdicts["firmware", i], DIGEST_ONLY)]
    summary(f"devices, mutated bundles (seed {SEED + 3}, {time.monotonic() - started:.1f} s)", counts)
    assert not differ, [(i, verdicts["agent", i], verdicts["firmware", i]) for i in differ]


def upload_and_run(device, content: bytes, x_q) -> str:
    """'refused' (INVALID_BUNDLE), 'ran' (verified, activated and INFER answered), or another refusal's code."""
    sha = hashlib.sha256(content).digest()
    try:
        begin = protocol.pack_upload_begin(len(content), sha, "m")
        chunk = protocol.unpack("I", device.request(Msg.UPLOAD_BEGIN, begin))
        for offset in range(0, len(content), chunk):
            device.request(Msg.UPLOAD_CHUNK, struct.pack("<I", offset) + content[offset : offset + chunk])
        device.request(Msg.UPLOAD_END, timeout=client.SLOW_TIMEOUT)
        device.request(Msg.ACTIVATE, sha, timeout=client.SLOW_TIMEOUT)
    except DeviceError as exc:
        assert exc.code != Err.INTERNAL, str(exc)
        if "manifest.json does not match its digest" in str(exc):
            return DIGEST_ONLY
        return "refused" if exc.code == Err.INVALID_BUNDLE else protocol.error_name(exc.code)
    for x in x_q:
        client.infer(device, x)  # a bundle a device accepted runs: no INTERNAL
    return "ran"


# ------------------------------------------------------------------------------------------ options
def test_hostile_option_values(tmp_path, monkeypatch, bundle, digits_bundle):
    here = tmp_path / "work" / "here"
    here.mkdir(parents=True)
    for canary in (here / "thesis.txt", here.parent / "notes.txt"):
        canary.write_text("keep")
    monkeypatch.chdir(here)
    rng, counts, started = random.Random(SEED + 4), collections.Counter(), time.monotonic()
    (tmp_path / "short.key").write_bytes(b"k" * 15)
    (tmp_path / "binary.key").write_bytes(os.urandom(64))
    (tmp_path / "empty.key").write_bytes(b"")
    outs = ["", " ", ".", "..", str(here), str(here.parent), "/", str(here / "thesis.txt"), str(tmp_path / "link"),
            str(tmp_path / "new-{i}"), "thesis.txt", "-", "~"]  # fmt: skip
    os.symlink(here, tmp_path / "link")
    numbers = [
        "0",
        "1",
        "-1",
        "100000",
        "100001",
        "4294967295",
        "4294967296",
        "1e3",
        "x",
        "",
        " 5",
        "99999999999999999999",
    ]
    ports = ["", "socket://", "socket://127.0.0.1:0", "socket://127.0.0.1:99999", "socket://[::1", "x" * 300, "\x00"]
    bad_keys = [tmp_path / name for name in ("short.key", "empty.key", "missing.key")] + [tmp_path]
    keys = [*bad_keys, tmp_path / "binary.key"]  # an agent with a good key would serve: only bad ones for it
    tcps = ["", ":", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:-1", "0.0.0.0:0", "x:y", "[::1]:1:2", "256.1.1.1:0"]
    b = digits_bundle[1]
    makers = [
        lambda i: ["score", b, "--data", "digits:test:0-4", "--out", rng.choice(outs).format(i=i), "--force"],
        lambda i: ["bench", b, "-n", rng.choice(numbers), "--warmup", rng.choice(numbers)],
        lambda i: ["bench", b, "-n", "2", "--out", rng.choice(outs).format(i=i), *rng.choice([[], ["--force"]])],
        lambda i: ["export-c", b, "--out", rng.choice(outs).format(i=i), *rng.choice([[], ["--force"]])],
        lambda i: ["export-firmware", "--board", "qemu-m4", "--out", rng.choice(outs).format(i=i), "--force"],
        lambda i: ["info", "--port", rng.choice(ports), "--key-file", rng.choice(keys)],
        lambda i: ["bench", "--port", rng.choice(ports), "-n", rng.choice(numbers)],
        lambda i: ["agent", "--data-dir", tmp_path / "agent", "--tcp", rng.choice(tcps)],
        lambda i: ["agent", "--data-dir", tmp_path / "agent", "--tcp", "0.0.0.0:0", "--key-file", rng.choice(bad_keys)],
    ]
    for i in range(scaled(180)):
        args = rng.choice(makers)(i)
        code, err = run_cli(*args)
        assert "Traceback" not in err and code in (0, 2), (args, err)
        if code == 2:
            assert err.strip().splitlines()[-1].startswith("edgefp: error: "), (args, err)
        counts[f"{args[0]}: exit {code}"] += 1
    assert (here / "thesis.txt").read_text() == "keep" and (here.parent / "notes.txt").read_text() == "keep"
    assert {"thesis.txt"} <= set(os.listdir(here)) <= {"thesis.txt", "-", "~"}  # new outputs named - or ~ only
    summary(f"options (seed {SEED + 4}, {time.monotonic() - started:.1f} s)", counts)
