"""Several devices from one laptop: flash, info, bench and monitor on many ports at once, through the real
command line against simulated boards on ptys and sockets, where one device dies mid-flash, one refuses
and one never answers while the others carry on."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edgefp.bundle import Bundle
from edgefp.firmware_host.device.agent import AUTH_DELAY_S, Agent, serving
from edgefp.firmware_host.link import client
from edgefp.firmware_host.link.fanout import on_each
from tests.cli.test_cli import edgefp
from tests.conftest import KEY

MODELS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "models")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two peer models wrapped as bundles (no training): {name: archive path}."""
    from edgefp.wrap import wrap

    root = tmp_path_factory.mktemp("many")
    made = {}
    for name in ("tflm_hello_world_int8", "mlperf_tiny_kws_ref"):
        made[name] = str(root / f"{name}.efp")
        wrap(os.path.join(MODELS, f"{name}.tflite"), made[name])
    return made


@contextlib.contextmanager
def simulators(tmp_path, *specs):
    """`edgefp sim` processes, one per (profile, link), each with its slots in a data directory of its own:
    yields a list of [process, url, data_dir], ended when the block ends."""
    running = []
    try:
        for i, (profile, link) in enumerate(specs):
            data_dir = str(tmp_path / f"sim{i}")
            running.append([start_sim(profile, link, data_dir), None, data_dir])
        for sim in running:
            sim[1] = sim[0].stdout.readline().strip()
            assert sim[1], sim[0].stderr.read()
        yield running
    finally:
        for process, _, _ in running:
            kill(process)


def start_sim(profile: str, link: str, data_dir: str) -> subprocess.Popen:
    """`edgefp sim` in a process group of its own (the command and the process serving the board)."""
    args = [sys.executable, "-m", "edgefp", "sim", "--profile", profile, "--data-dir", data_dir]
    args += ["--tcp"] if link == "tcp" else []
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, start_new_session=True)


def kill(sim: subprocess.Popen) -> None:
    """Pull the board's plug: SIGKILL to the command and the process serving the board at once."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sim.pid, signal.SIGKILL)
    sim.wait(10)


def active(url: str, key: bytes | None = None) -> str | None:
    with client.open_device(url, key=key) as device:
        slot = client.info(device)["active"]
    return slot and slot["name"]


def test_flash_many_where_one_dies_one_refuses_and_one_never_answers(bundles, tmp_path):
    first, second = bundles["mlperf_tiny_kws_ref"], bundles["tflm_hello_world_int8"]
    key_file, wrong_key = tmp_path / "key", tmp_path / "wrong-key"
    key_file.write_bytes(KEY)
    wrong_key.write_bytes(b"another key, 32 bytes long......")
    specs = [("nrf52840", "pty"), ("pi", "tcp"), ("nrf52840", "tcp")]
    with simulators(tmp_path, *specs) as sims, serving(Agent(str(tmp_path / "keyed"), "pi", key=KEY), "tcp") as keyed:
        urls = [url for _, url, _ in sims]
        ports = [arg for url in [*urls, keyed] for arg in ("--port", url)]
        result = edgefp("flash", first, *ports, "--key-file", str(key_file), "--json")
        outcomes = json.loads(result.stdout)
        assert result.returncode == 0, result.stdout + result.stderr
        assert [o["device"] for o in outcomes] == [*urls, keyed]
        assert all(o["ok"] and o["error"] is None and o["result"]["uploaded"] for o in outcomes)
        assert all(0 < o["result"]["seconds"] <= o["seconds"] for o in outcomes)

        # the third board dies (SIGKILL) after the first chunk of the next bundle reached it
        victim = sims[2]

        def kill_victim(port: str, done: int, total: int) -> None:
            if port == victim[1] and victim[0].poll() is None:
                kill(victim[0])

        def upload(url: str, progress) -> dict:
            with client.open_device(url) as device:
                return client.flash(device, Bundle.load(second).archive_bytes(), progress)

        dead = on_each(urls, upload, on_progress=kill_victim)
        assert [o.ok for o in dead] == [True, True, False]
        assert dead[2].error.startswith(f"{victim[1]}: ") and dead[2].seconds > 0
        assert "the link dropped" in dead[2].error or "no answer" in dead[2].error  # a link error, whichever came first
        assert [active(url) for url in urls[:2]] == ["tflm_hello_world_int8"] * 2
        victim[0] = start_sim("nrf52840", "tcp", victim[2])  # back, on a new port, from its own slots
        victim[1] = victim[0].stdout.readline().strip()
        assert active(victim[1]) == "mlperf_tiny_kws_ref"  # its last good bundle

        # the keyed agent refuses a wrong key, a port that is no device never answers: the rest succeed
        missing = str(tmp_path / "no-such-port")
        ports = [arg for url in [urls[0], victim[1], keyed, missing] for arg in ("--port", url)]
        result = edgefp("flash", second, *ports, "--key-file", str(wrong_key))
        assert result.returncode == 1, result.stderr
        table = result.stdout.splitlines()
        assert table[0].split() == ["device", "result", "seconds"] and table[-1] == "2 of 4 devices ok"
        rows = {line.split()[0]: line.split(maxsplit=3)[1:] for line in table[1:-1]}
        assert rows[urls[0]][0] == "ok" and rows[urls[0]][2] == "tflm_hello_world_int8 already active, nothing uploaded"
        assert rows[victim[1]][0] == "ok" and rows[victim[1]][2] == "tflm_hello_world_int8 verified and active"
        assert rows[keyed][0] == "FAILED" and "AUTH" in rows[keyed][2]
        assert rows[missing][0] == "FAILED" and rows[missing][2].startswith(f"cannot open {missing}")
        assert all(float(seconds) >= 0 for _, seconds, _ in rows.values())
        progress = result.stderr.splitlines()  # plain lines when stderr is no terminal: a start and an end each
        assert sum(line.startswith(keyed) and "FAILED" in line for line in progress) == 1
        assert sum(line.startswith(urls[0]) and "done" in line for line in progress) == 1

        # info and bench on all of them: the keyed agent still runs its last good bundle
        time.sleep(AUTH_DELAY_S)  # a peer that gave a wrong key waits this long before its next try
        ports = [arg for url in [*urls[:2], victim[1], keyed] for arg in ("--port", url)]
        result = edgefp("info", *ports, "--key-file", str(key_file), "--json")
        assert result.returncode == 0, result.stderr
        assert [o["result"]["active"]["name"] for o in json.loads(result.stdout)] == [
            *["tflm_hello_world_int8"] * 3,
            "mlperf_tiny_kws_ref",
        ]
        out = tmp_path / "bench"
        result = edgefp("bench", *ports[:4], "--port", missing, "-n", "5", "--warmup", "1", "--out", str(out))
        assert result.returncode == 1 and result.stdout.splitlines()[-1] == "2 of 3 devices ok", result.stderr
        written = sorted(os.listdir(out))  # one result per device that answered, named after its port
        assert written == sorted(re.sub(r"[^\w.-]+", "_", url).strip("_") + ".json" for url in urls[:2])
        assert all(json.loads((out / name).read_text())["runs"] == 5 for name in written)


def test_on_a_terminal_each_device_keeps_one_line_redrawn_in_place(bundles, tmp_path, monkeypatch, capsys):
    from edgefp.cli.common import on_devices

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, archive = Terminal(), Bundle.load(bundles["mlperf_tiny_kws_ref"]).archive_bytes()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("COLUMNS", "60")
    missing = "no-such-port"
    with serving(Agent(str(tmp_path / "a"), "nrf52840")) as a, serving(Agent(str(tmp_path / "b"), "pi"), "tcp") as b:
        code = on_devices(
            [a, b, missing],
            None,
            lambda device, progress: client.flash(device, archive, progress),
            task="flashing",
            summary=lambda report: report["name"],
            as_json=False,
        )
    assert code == 1 and "2 of 3 devices ok" in capsys.readouterr().out
    rows = screen(terminal.getvalue())
    assert [row.split()[0] for row in rows] == [a, b, missing] and all(len(row) < 60 for row in rows)
    assert [row.split()[1] for row in rows] == ["done", "done", "FAILED:"]
    assert terminal.getvalue().count("\x1b[3F") >= 3  # drawn again in place as the devices went on


def screen(text: str) -> list[str]:
    """The lines a terminal shows after ``text``, which moves up with ESC[nF and clears a line with ESC[2K."""
    rows, row = [""], 0
    for token in re.split(r"(\x1b\[\d*[FK]|\n)", text):
        if token == "\n":
            row += 1
            rows += [""] * (row + 1 - len(rows))
        elif token.endswith("F") and token.startswith("\x1b["):
            row -= int(token[2:-1])
        elif token == "\x1b[2K":
            rows[row] = ""
        else:
            rows[row] += token
    return [line for line in rows if line]


@pytest.mark.parametrize("bad", [[], ["--all", "--port", "x"], ["--port", ""]])
def test_devices_named_wrongly_are_one_line_and_exit_2(bad):
    result = edgefp("info", *bad)
    assert result.returncode == 2 and result.stderr.startswith("edgefp: error: ") and "--all" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_all_takes_every_port_that_answers_the_handshake(bundles, tmp_path, monkeypatch, capsys):
    """--all probes the machine's serial ports at once (the ports a USB bus would list are faked: this
    machine has none) and works on those that answer; none answering is one line and exit status 2."""
    from serial.tools import list_ports, list_ports_common

    from edgefp.cli.main import main

    silent_master, silent = os.openpty()  # a serial port that nothing answers on
    found: list[str] = []
    monkeypatch.setattr(list_ports, "comports", lambda: [list_ports_common.ListPortInfo(p, True) for p in found])

    def run(*args) -> int:
        with pytest.raises(SystemExit) as end:
            main(list(args))
        return end.value.code

    monkeypatch.setenv("EDGEFP_PORT", str(tmp_path / "not-this-one"))  # --all overrides the environment's URLs
    try:
        found.append(os.ttyname(silent))
        assert run("flash", bundles["tflm_hello_world_int8"], "--all") == 2
        assert "no serial port answers the edgefp handshake" in capsys.readouterr().err
        key_file = tmp_path / "key"
        key_file.write_bytes(KEY)
        with contextlib.ExitStack() as stack:
            a, b, keyed = (
                stack.enter_context(serving(Agent(str(tmp_path / name), "pi", key=key)))
                for name, key in (("a", None), ("b", None), ("keyed", KEY))
            )
            found += [keyed, b, a]
            assert run("devices", "--probe", "--json") == 0
            probed = {entry["port"]: entry["edgefp"] for entry in json.loads(capsys.readouterr().out)["ports"]}
            assert probed[found[0]] is None and probed[a] == {"board": "pi", "runtime": "litert", "key_required": False}
            assert probed[keyed]["key_required"]  # it answered the handshake: it is found, and asks for its key
            assert run("flash", bundles["tflm_hello_world_int8"], "--all", "--key-file", str(key_file), "--json") == 0
            outcomes = json.loads(capsys.readouterr().out)
            assert [o["device"] for o in outcomes] == sorted([a, b, keyed]) and all(o["ok"] for o in outcomes)
            assert active(a) == active(b) == active(keyed, KEY) == "tflm_hello_world_int8"
    finally:
        os.close(silent_master)
        os.close(silent)


def test_monitor_merges_devices_survives_one_dropping_and_ends_on_ctrl_c(bundles, tmp_path):
    archive = Bundle.load(bundles["tflm_hello_world_int8"]).archive_bytes()
    agents = [Agent(str(tmp_path / name), "pi") for name in "ab"]
    log, lines, feeding = tmp_path / "events.jsonl", [], threading.Event()

    def feed(agent: Agent) -> None:
        for i in range(100000):
            if feeding.wait(0.02):
                return
            with contextlib.suppress(Exception):  # its link may be gone: a sensor does not care
                agent.observe(np.array([i % 256 - 128], np.int8))

    def seen(url: str) -> int:
        return sum(json.loads(line)["device"] == url for line in list(lines))

    def wait_for(condition, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert condition(), lines[-5:]

    with contextlib.ExitStack() as dropped, serving(agents[0], "pty") as url_a:
        url_b = dropped.enter_context(serving(agents[1], "tcp"))
        for url in (url_a, url_b):
            with client.open_device(url) as device:
                client.flash(device, archive)
        feeders = [threading.Thread(target=feed, args=(agent,)) for agent in agents]
        for feeder in feeders:
            feeder.start()
        args = [sys.executable, "-m", "edgefp", "monitor", "--port", url_a, "--port", url_b, "--log", str(log)]
        monitor = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        reader = threading.Thread(target=lambda: lines.extend(monitor.stdout), daemon=True)
        reader.start()
        try:
            wait_for(lambda: seen(url_a) >= 3 and seen(url_b) >= 3)
            dropped.close()  # device b is gone; a keeps streaming
            before = seen(url_a)
            wait_for(lambda: seen(url_a) >= before + 10)
            os.killpg(monitor.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
            code = monitor.wait(10)
        finally:
            feeding.set()
            for feeder in feeders:
                feeder.join(10)
            if monitor.poll() is None:
                monitor.kill()
        stderr = monitor.stderr.read()
    assert code == 130 and stderr.rstrip().endswith("edgefp: interrupted") and "Traceback" not in stderr, stderr
    assert f"link to {url_b} lost" in stderr
    reader.join(5)
    events = [json.loads(line) for line in lines]
    assert {event["device"] for event in events} == {url_a, url_b}
    assert all({"received", "input", "pred", "score", "ood", "latency_us"} <= set(event) for event in events)
    for url in (url_a, url_b):  # each device's own inputs, in order
        inputs = [event["input"] for event in events if event["device"] == url]
        assert inputs == sorted(inputs) and len(set(inputs)) == len(inputs)
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert logged[: len(events)] == events
