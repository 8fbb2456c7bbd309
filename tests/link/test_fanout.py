"""One operation on several devices at once: each in its own thread, a failure of any kind its own,
the outcomes in the order the ports were given, and Ctrl-C telling every device's work to stop."""

import signal
import threading
import time

import pytest

from edgefp.errors import EdgefpError
from edgefp.firmware_host.link.fanout import on_each


def test_each_failure_stays_with_its_device_and_the_order_is_kept():
    started, ends = threading.Barrier(4, timeout=10), []

    def work(port: str, progress) -> str:
        started.wait()  # all four run at once, not one after the other
        progress(1, 2)
        if port == "refuses":
            raise EdgefpError("device refused UPLOAD_END: DOES_NOT_FIT:\n  too big")
        if port == "drops":
            raise ConnectionResetError(104, "Connection reset by peer")
        if port == "bug":
            raise KeyError("slots")
        time.sleep(0.2)  # ends last: the others' failures did not cut it short
        return port.upper()

    told = []
    outcomes = on_each(
        ["ok", "refuses", "drops", "bug"], work, on_progress=lambda *a: told.append(a), on_done=ends.append
    )
    assert [(o.port, o.ok, o.result) for o in outcomes] == [
        ("ok", True, "OK"),
        ("refuses", False, None),
        ("drops", False, None),
        ("bug", False, None),
    ]
    assert [o.error for o in outcomes[1:]] == [
        "device refused UPLOAD_END: DOES_NOT_FIT: too big",
        "[Errno 104] Connection reset by peer",
        "KeyError: 'slots'",
    ]
    assert ends[-1].port == "ok" and outcomes[0].seconds >= 0.2 and all(o.seconds > 0 for o in outcomes)
    assert sorted(told) == sorted((port, 1, 2) for port in ("ok", "refuses", "drops", "bug"))
    assert outcomes[0].to_dict() == {
        "device": "ok",
        "ok": True,
        "error": None,
        "seconds": outcomes[0].seconds,
        "result": "OK",
    }
    assert on_each([], work) == []


def test_ctrl_c_tells_the_work_to_stop_and_goes_on():
    stop, stopped = threading.Event(), []
    running = threading.Barrier(4, timeout=10)

    def follow(port: str, _progress) -> None:
        running.wait()
        while not stop.wait(0.01):
            pass
        stopped.append(port)

    def ctrl_c() -> None:  # once every device's work runs
        running.wait()
        signal.raise_signal(signal.SIGINT)

    threading.Thread(target=ctrl_c).start()
    with pytest.raises(KeyboardInterrupt):
        on_each(["a", "b", "c"], follow, stop=stop)
    assert sorted(stopped) == ["a", "b", "c"]
