"""Native code never takes a command down: the TFLite Micro arena is measured in child processes, a
manifest's arena is checked before TFLite Micro sees it, and a crash that still happens is reported as
one line naming the step, exit status 2."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from edgefp import runtime
from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError
from edgefp.firmware_host.device.agent import Agent, serving
from edgefp.firmware_host.link import client
from edgefp.firmware_host.link.client import DeviceError
from tests.conftest import edited_archive, upload

LINUX = sys.platform.startswith("linux")


@pytest.fixture(scope="module")
def model(digits_bundle):
    return Bundle.load(digits_bundle[1]).model_bytes


@pytest.fixture
def fresh_bounds():
    """Forget what this process learnt about arenas, so that every check probes again."""
    saved = dict(runtime._arena_bounds)
    runtime._arena_bounds.clear()
    yield
    runtime._arena_bounds.clear()
    runtime._arena_bounds.update(saved)


def test_the_arena_is_the_smallest_tflite_micro_runs_the_model_in(model, digits_bundle, fresh_bounds):
    need = runtime.tflm_arena_bytes(model)
    assert need == digits_bundle[0].tflm_arena_bytes and need % 16 == 0
    with runtime._ArenaProbe(model) as probe:
        assert probe.fits(need) and probe.recorded < need  # TFLite Micro's own record leaves something out
        assert not probe.fits(need - 16)
    interpreter = runtime.TFLiteMicro(model, need)
    x_q = Bundle.load(digits_bundle[1]).quantize(np.zeros((1, 8, 8, 1), np.float32))[0]
    assert len(interpreter.invoke(x_q)) == 1 + len(digits_bundle[0].layers)


def test_arenas_too_small_crash_tflite_micro_only_in_a_child(model, fresh_bounds, tmp_path):
    need = runtime.tflm_arena_bytes(model)
    crashed = []
    with runtime._ArenaProbe(model) as probe:
        for size in range(16, need, need // 20 // 16 * 16):
            assert not probe.fits(size)
            if "crashed" in probe.failure:
                crashed.append(size)
    assert len(crashed) < 20  # most arenas too small fail cleanly; the child survived the others
    if not crashed:
        pytest.skip("this TFLite Micro fails cleanly on every arena too small")
    # The same allocation in a command's own process: the crash is reported, naming the step.
    path = tmp_path / "model.tflite"
    path.write_bytes(model)
    script = f"""
        from tflite_micro.python.tflite_micro import runtime
        from edgefp.isolation import step, supervised
        def run():
            with step("allocating the model in TFLite Micro"):
                runtime.Interpreter.from_bytes(open({str(path)!r}, "rb").read(), arena_size={crashed[0]})
        supervised(run, "test")
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgefp:")]
    assert result.returncode == 2, result.stderr[-500:]
    assert len(lines) == 1 and "crashed (SIG" in lines[0] and "while allocating the model in TFLite Micro" in lines[0]


@pytest.fixture(scope="module")
def bad_arenas(digits_bundle, tmp_path_factory):
    """The digits bundle with its manifest's tflm_arena_bytes replaced (and the digest made to match)."""
    root, bundle = tmp_path_factory.mktemp("arenas"), Bundle.load(digits_bundle[1])
    out = {}
    for value in (0, 16, 256, bundle.manifest.tflm_arena_bytes - 16, 2**40, "4096", True):
        path = root / f"arena{len(out)}.efp"
        path.write_bytes(edited_archive({**bundle.manifest.to_json(), "tflm_arena_bytes": value}, bundle.files))
        out[repr(value)] = str(path)
    return out


def test_a_manifest_arena_too_small_is_refused_by_every_command(bad_arenas):
    for value, path in bad_arenas.items():  # not an arena size: the manifest's rules; too small: TFLite Micro's
        with pytest.raises(EdgefpError, match=rf"tflm_arena_bytes {value} is below|tflm_arena_bytes must be an"):
            Bundle.load(path).score(np.zeros((2, 8, 8, 1), np.float32), "tflm")
    for command in (["score", bad_arenas["16"], "--data", "digits:test"], ["bench", bad_arenas["16"]]):
        result = subprocess.run(
            [sys.executable, "-m", "edgefp", *command, "--runtime", "tflm"], capture_output=True, text=True
        )
        assert result.returncode == 2
        assert result.stderr.startswith("edgefp: error: tflm_arena_bytes 16 is below the ")
        assert len(result.stderr.splitlines()) == 1


def test_a_simulated_board_refuses_a_bundle_whose_arena_is_too_small(bad_arenas, digits_bundle, tmp_path):
    good = Bundle.load(digits_bundle[1]).archive_bytes()
    with serving(Agent(str(tmp_path), "nrf52840")) as url, client.open_device(url, timeout=5) as device:
        client.flash(device, good)
        for value in ("16", "0", "True"):
            with open(bad_arenas[value], "rb") as handle:
                expected = f"INVALID_BUNDLE: (tflm_arena_bytes {value} is|.*tflm_arena_bytes must be an integer)"
                with pytest.raises(DeviceError, match=expected):
                    upload(device, handle.read())  # the device's own checks, the host's bypassed
        assert client.hello(device).active.name == "digits04"  # the last good bundle serves on
        assert client.infer(device, np.zeros((8, 8, 1), np.int8)).latency_us >= 0


def test_a_model_tflite_micro_cannot_load_is_refused_in_one_line(model, fresh_bounds):
    with pytest.raises(EdgefpError, match=r"TFLite Micro cannot run the model \(in arenas up to 1 GiB\): ") as info:
        runtime.tflm_arena_bytes(model[: len(model) // 2])
    assert "\n" not in str(info.value)


def test_a_crash_is_one_line_naming_the_step_and_exit_status_2():
    script = """
        import ctypes
        from edgefp.isolation import step, supervised
        def run():
            print("working", flush=True)
            with step("reading from address zero"):
                ctypes.string_at(0)
        supervised(run, "test")
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == "working\n"
    assert result.stderr.startswith("edgefp: error: crashed (SIGSEGV) while reading from address zero; ")
    assert len(result.stderr.splitlines()) == 1


def _child_of(pid: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            children = handle.read().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("the command did not start its child")


def _gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().split(") ")[1].startswith("Z"):  # exited, not yet reaped
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not LINUX, reason="reads /proc")
@pytest.mark.parametrize("how", ["terminate", "kill"])
def test_a_supervised_command_ends_with_its_parent(how):
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefp", "sim", "--profile", "nrf52840"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().startswith("/dev/")
        child = _child_of(process.pid)
        getattr(process, how)()
        assert process.wait(10) == {"terminate": -signal.SIGTERM, "kill": -signal.SIGKILL}[how]
        assert _gone(child)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_without_fork_the_command_runs_in_process(monkeypatch):
    from edgefp import isolation

    ran = []
    monkeypatch.delattr(os, "fork")
    isolation.supervised(lambda: ran.append(os.getpid()), "test")
    assert ran == [os.getpid()]
