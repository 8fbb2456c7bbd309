"""Nobody locked out and nothing trusted that should not be: the agent's sessions, keys and caps, the host's
bounds on what a device tells it, and every device command against an agent that requires a key."""

import dataclasses
import json
import socket
import struct
import threading
import time

import numpy as np
import pytest

from edgefp import data
from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError
from edgefp.firmware_host.device import agent as agent_module
from edgefp.firmware_host.device.agent import Agent, Session, serving
from edgefp.firmware_host.link import client, protocol
from edgefp.firmware_host.link.client import DeviceError
from edgefp.firmware_host.link.framing import DELIMITER, Frame, FrameReader, encode_frame
from edgefp.firmware_host.link.protocol import Err, Msg
from edgefp.limits import MAX_INVOKES
from edgefp.manifest import Output
from tests.cli.test_cli import edgefp
from tests.conftest import KEY


@pytest.fixture(scope="module")
def archive(digits_bundle):
    return Bundle.load(digits_bundle[1]).archive_bytes()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("socket://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def exchange(sock: socket.socket, type_: int, seq: int, body: bytes = b"", wire: bytes | None = None) -> Frame | None:
    """Send one request (or the given wire bytes) and return the first frame back, None when none comes in 1 s."""
    sock.sendall(wire or DELIMITER + encode_frame(type_, seq, body))
    reader, deadline = FrameReader(), time.monotonic() + 1.0
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            data_in = sock.recv(65536)
        except TimeoutError:
            continue
        if not data_in:
            raise ConnectionError("closed")
        frames = [item for item in reader.feed(data_in) if isinstance(item, Frame)]
        if frames:
            return frames[0]
    return None


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def respond(agent: Agent, session: Session, type_: int, body: bytes = b"", seq: int = 1):
    """The agent's answer to one request, without a link: (type, code or None, message or body)."""
    from edgefp.firmware_host.link.framing import decode_frame

    reply = agent.respond(Frame(type_, seq, body), session)
    if reply is None:
        return None
    frame = decode_frame(reply[:-1])
    if frame.type == Msg.ERROR:
        code, _, message = protocol.unpack_error(frame.body)
        return frame.type, code, message
    return frame.type, None, frame.body


def test_idle_and_unauthenticated_connections_lock_nobody_out(tmp_path, monkeypatch, archive):
    monkeypatch.setattr(agent_module, "HANDSHAKE_S", 1.0)
    monkeypatch.setattr(agent_module, "MAX_CLIENTS", 3)
    agent = Agent(str(tmp_path), "pi", key=KEY)
    with serving(agent, "tcp") as url:
        idle = connect(url)  # says nothing
        greeted = connect(url)  # HELLO, then no AUTH
        assert exchange(greeted, Msg.HELLO, 1, struct.pack("<H", 1)).type == Msg.HELLO | 0x80
        started = time.monotonic()
        with client.open_device(url, key=KEY) as device:  # served beside them, at once
            client.flash(device, archive)
            assert client.info(device)["active"]["name"] == "digits04"
            crowd = connect(url)  # the fourth connection: over the limit, closed at once
            assert closed_within(crowd, 1.0)
            assert closed_within(idle, 2.0) and closed_within(greeted, 2.0)
            assert time.monotonic() - started < 2.5
            assert client.counters(device)["inputs"] == 0  # an authenticated session stays
        for sock in (idle, greeted, crowd):
            sock.close()


def test_clients_side_by_side_get_their_own_answers(tmp_path, archive, digits_bundle):
    agent = Agent(str(tmp_path), "pi")
    x = data.load("digits:test:0-4").x[:30]
    expected = Bundle.load(digits_bundle[1]).score(x)
    results, errors = {}, []

    def run(name: str, url: str) -> None:
        try:
            with client.open_device(url) as device:
                results[name] = client.infer_samples(device, x)[0]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with serving(agent, "tcp") as url:
        with client.open_device(url) as device:
            client.flash(device, archive)
        threads = [threading.Thread(target=run, args=(name, url)) for name in "abc"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not errors and sorted(results) == ["a", "b", "c"]
    for scores in results.values():
        np.testing.assert_array_equal(scores.layer_errors, expected.layer_errors)
    assert agent.counters.inputs == 3 * len(x)


def test_a_replayed_request_gets_no_kept_answer_outside_its_session(tmp_path):
    agent = Agent(str(tmp_path), "pi", key=KEY)
    with serving(agent, "tcp") as url:
        with client.open_device(url, key=KEY) as device:
            client.counters(device)
            wire = DELIMITER + encode_frame(Msg.GET_COUNTERS, device.seq, b"")  # what was on the wire
            again = exchange_via(device, wire)
            assert again.type == Msg.GET_COUNTERS | 0x80  # a duplicate in its session: the kept answer
            other = connect(url)
            replayed = exchange(other, 0, 0, wire=wire)
            assert replayed.type == Msg.ERROR and replayed.body[0] == Err.AUTH_REQUIRED
            assert exchange(other, Msg.HELLO, 7, struct.pack("<H", 1)).type == Msg.HELLO | 0x80
            replayed = exchange(other, 0, 0, wire=wire)  # a HELLO, still no AUTH: still refused
            assert replayed.type == Msg.ERROR and replayed.body[0] == Err.AUTH_REQUIRED
            other.close()


def exchange_via(device, wire: bytes) -> Frame:
    device.port.write(wire)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        reply = device._sort(device.seq)
        if isinstance(reply, Frame):
            return reply
        device._receive(deadline)
    raise AssertionError("no answer")


def test_wrong_keys_slow_down_their_sender_only(tmp_path, monkeypatch):
    monkeypatch.setattr(agent_module, "AUTH_DELAY_S", 0.1)
    agent = Agent(str(tmp_path), "pi", key=KEY)
    attacker, user = Session(None, "10.0.0.66"), Session(None, "10.0.0.7")

    def try_key(session, key):
        challenge = protocol.Hello.unpack(respond(agent, session, Msg.HELLO, struct.pack("<H", 1))[2]).challenge
        mac = __import__("hmac").new(key, challenge, "sha256").digest()
        return respond(agent, session, Msg.AUTH, mac)

    for wrong in range(3):  # each wrong key doubles the wait: 0.1, 0.2, 0.4 s
        assert try_key(attacker, b"x" * 16)[1:] == (Err.AUTH_FAILED, "wrong key; send HELLO and try again")
        assert "too many wrong keys" in try_key(attacker, KEY)[2]
        time.sleep(0.1 * 2**wrong + 0.05)
    assert try_key(attacker, b"x" * 16)[1] == Err.AUTH_FAILED
    time.sleep(0.5)
    assert "too many wrong keys" in try_key(attacker, KEY)[2]  # 0.8 s now
    assert try_key(user, KEY)[1] is None  # another peer is not held up
    assert respond(agent, user, Msg.GET_COUNTERS)[1] is None


def test_requests_are_checked_to_the_byte(tmp_path, digits_bundle):
    agent, session = Agent(str(tmp_path), "pi"), Session(None)
    assert respond(agent, session, Msg.AUTH, bytes(33))[1] == Err.BAD_LENGTH
    assert respond(agent, session, Msg.AUTH, bytes(32))[1] is None  # no key: nothing to check
    assert respond(agent, session, Msg.EVENTS, b"\x02")[1:] == (Err.OUT_OF_RANGE, "enable must be 0 or 1, not 2")
    assert respond(agent, session, Msg.RESET, b"\x05")[1] == Err.OUT_OF_RANGE
    assert respond(agent, session, Msg.GET_COUNTERS, seq=0) is None  # seq 0 is never a request
    gib = protocol.pack_upload_begin(1 << 30, bytes(32), "big")
    code, message = respond(agent, session, Msg.UPLOAD_BEGIN, gib)[1:]
    assert code == Err.DOES_NOT_FIT and "bytes more storage" in message
    assert protocol.unpack_error(protocol.pack_error(Err.INTERNAL, 1, "line one\nline two\x1b[2J"))[2] == (
        "line one line two [2J"
    )


def test_bench_is_capped_in_count_and_time(tmp_path, monkeypatch, archive):
    agent = Agent(str(tmp_path), "pi")
    with serving(agent, "tcp") as url, client.open_device(url) as device:
        client.flash(device, archive)
        for runs, warmup in [(MAX_INVOKES + 1, 0), (0xFFFFFFFF, 0), (1, 0xFFFFFFFF)]:
            with pytest.raises(DeviceError, match="OVER_LIMIT: runs and warmup add up to"):
                client.bench(device, runs=runs, warmup=warmup)
        monkeypatch.setattr(agent_module, "BENCH_MAX_SECONDS", 0.2)
        started = time.monotonic()
        with pytest.raises(DeviceError, match="OVER_LIMIT: the benchmark ran past its 0.2-s limit"):
            client.bench(device, runs=MAX_INVOKES, warmup=0)
        assert time.monotonic() - started < 2
        assert client.bench(device, runs=5, warmup=0)["runs"] == 5  # and the device still serves


class Rogue(Agent):
    """An agent that lies in one answer (``lie``: request type -> body), as a malicious device would."""

    def __init__(self, data_dir, lies: dict):
        super().__init__(data_dir, "pi")
        self._handlers = {
            **Agent._handlers,
            **{type_: (lambda _s, body, _session, f=f: f(body)) for type_, f in lies.items()},
        }


def _stats(value: float) -> dict:
    return dict.fromkeys(protocol.STATS, value)


def _log_answer(number: int, total: int) -> bytes:
    """A READ_LOG answer (the log has seen 1 input) with entry ``number`` announcing ``total`` bytes."""
    result = protocol.InferResult(0, np.zeros(5, np.int8), np.zeros(3, np.int8), 1.0, 1, 5)
    page = protocol.LogPage(1, 1, 1, 16, protocol.LogEntry(number, 0, result, protocol.DataKind.RAW, b""))
    return page.pack()[:-4] + struct.pack("<I", total) + bytes(8)


# case -> (lying answers: request type -> body from request body, what the host does, the error it must give)
ROGUE = {
    "endless manifest": (
        {Msg.MANIFEST: lambda body: struct.pack("<I", protocol.unpack("I", body) + 1000) + b"{" * 600},
        lambda device, other: client.manifest(device),
        "inconsistent pieces",
    ),
    "huge manifest": (
        {Msg.MANIFEST: lambda body: struct.pack("<I", 1 << 31) + b"{" * 600},
        lambda device, other: client.manifest(device),
        "a manifest of 2147483648 bytes",
    ),
    "manifest that is no manifest": (
        {Msg.MANIFEST: lambda body: struct.pack("<I", 2) + b"[]"},
        lambda device, other: client.manifest(device),
        "must be an object",
    ),
    "zero timings": (
        {Msg.BENCH: lambda body: protocol.BenchResult(0, 0, 5, 0, _stats(0.0), [0.0] * 5).pack(4000)},
        lambda device, other: client.bench(device, runs=5, warmup=0),
        "impossible timings",
    ),
    "other runs": (
        {Msg.BENCH: lambda body: protocol.BenchResult(1, 1, 7, 0, _stats(1.0), []).pack(4000)},
        lambda device, other: client.bench(device, runs=5, warmup=0),
        "does not match the request",
    ),
    "endless OOD buffer": (
        {Msg.GET_COUNTERS: lambda body: protocol.Counters(1, 1, 100, 1, 1.0, 0xFFFFFFFF, 32).pack()},
        lambda device, other: client.pull_ood(device),
        "holds 4294967295 OOD samples",
    ),
    "short OOD sample": (
        {
            Msg.GET_COUNTERS: lambda body: protocol.Counters(1, 1, 100, 1, 1.0, 1, 32).pack(),
            Msg.GET_OOD: lambda body: protocol.OodSample(1, 1, 0, 1.0, b"xy").pack(),
        },
        lambda device, other: client.pull_ood(device),
        "an OOD sample of 2 bytes",
    ),
    "other classes": (
        {Msg.INFER: lambda body: protocol.InferResult(9, np.zeros(12, np.int8), np.zeros(3, np.int8), 1, 1, 5).pack()},
        lambda device, other: client.infer_samples(device, data.load("digits:test").x[:2]),
        "12 classes",
    ),
    "outputs of another size": (
        {Msg.INFER_OUTPUTS: lambda body: struct.pack("<I", 5) + bytes(4000)},
        lambda device, other: client.infer_outputs(device, np.zeros(64, np.int8), [Output(0, (10,), 1.0, 0)]),
        "malformed body",
    ),
    "no room for chunks": (
        {Msg.UPLOAD_BEGIN: lambda body: struct.pack("<I", 0)},
        lambda device, other: client.flash(device, other),
        "chunks of 0 bytes",
    ),
    "huge logged input": (
        {Msg.READ_LOG: lambda body: _log_answer(1, 1 << 31)},
        lambda device, other: client.read_log(device, 0),
        "an input of 2147483648 bytes",
    ),
    "logged input from nowhere": (
        {Msg.READ_LOG: lambda body: _log_answer(99, 8)},
        lambda device, other: client.read_log(device, 0),
        "does not match its own log",
    ),
    "a malformed answer": (
        {Msg.GET_COUNTERS: lambda body: b"\x01"},
        lambda device, other: client.counters(device),
        "malformed body",
    ),
}


@pytest.mark.parametrize("case", ROGUE)
def test_the_host_bounds_what_a_device_says(tmp_path, archive, digits_bundle, case):
    lies, action, message = ROGUE[case]
    other = Bundle.load(digits_bundle[1])
    other.manifest = dataclasses.replace(other.manifest, name="other")
    honest = Agent(str(tmp_path), "pi")
    with serving(honest) as url, client.open_device(url) as device:
        client.flash(device, archive)
    rogue = Rogue(str(tmp_path), lies)
    started = time.monotonic()
    with serving(rogue) as url, client.open_device(url, timeout=0.5) as device:
        with pytest.raises(EdgefpError, match=message):
            action(device, other.archive_bytes())
    assert time.monotonic() - started < 10


def test_every_device_command_takes_the_key(tmp_path, digits_bundle):
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")
    short = tmp_path / "short"
    short.write_bytes(b"secret\n")
    agent = Agent(str(tmp_path / "device"), "pi", key=KEY)
    repo = str(tmp_path / "repo")
    assert edgefp("repo", "add", digits_bundle[1], "--repo", repo).returncode == 0
    inverted = tmp_path / "inverted.npz"
    np.savez(inverted, x=1 - data.load("digits:test:0-4").x)
    with serving(agent, "tcp") as url:
        keyed = ["--port", url, "--key-file", str(key_file)]
        runs = {
            "flash": edgefp("flash", digits_bundle[1], *keyed),
            "info": edgefp("info", *keyed),
            "infer": edgefp("infer", "--data", str(inverted), *keyed),
            "bench": edgefp("bench", *keyed, "-n", "10", "--warmup", "1"),
            "pull-ood": edgefp("pull-ood", "--out", str(tmp_path / "review"), *keyed),
            "monitor": edgefp("monitor", *keyed, "--duration", "0.5"),
            "watch": edgefp("watch", *keyed, "--repo", repo, "--once", "--interval", "0.1",
                            "--events", str(tmp_path / "events.jsonl")),
            "select --deploy": edgefp("select", "--repo", repo, "--data", "digits:test:0-4", "--deploy", url,
                                      "--key-file", str(key_file)),
        }  # fmt: skip
        short_key = edgefp("info", "--port", url, "--key-file", str(short))
    for command, result in runs.items():
        assert result.returncode == 0, f"{command}: {result.stderr}"
    assert json.loads((tmp_path / "events.jsonl").read_text().splitlines()[0])["samples"] >= 8
    assert short_key.returncode == 2 and "the key has 6 bytes, give at least 16" in short_key.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "B", "-n", "4294967296"], "-n"),
        (["bench", "B", "-n", "60000", "--warmup", "60000"], "add up to 120,000"),
        (["agent", "--data-dir", "D", "--tcp", "127.0.0.1:99999"], "port 99999 is not a TCP port"),
        (["agent", "--data-dir", "D", "--tcp", "0.0.0.0:0"], "give the agent a shared key"),
    ],
)
def test_out_of_range_options_are_one_line(tmp_path, args, message):
    result = edgefp(*[str(tmp_path / arg) if arg in ("B", "D") else arg for arg in args])
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
