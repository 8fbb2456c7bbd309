"""The one reconnect policy of monitor, record and watch, against an agent on a real socket: which
errors it retries (the link's, a forgotten session) and which it raises at once (a device never
reached, the device's other refusals)."""

import logging

import pytest

from edgefp.errors import EdgefpError
from edgefp.firmware_host.device.agent import Agent, serving
from edgefp.firmware_host.link import client
from edgefp.firmware_host.link.protocol import Err, Msg
from edgefp.firmware_host.link.reconnect import reconnecting, retryable


@pytest.mark.parametrize(
    "error, retried",
    [
        (OSError("reset by peer"), True),
        (client.LinkError("socket://x: the link dropped"), True),
        (client.LinkError("cannot open /dev/ttyACM0: No such file"), True),
        (EdgefpError("socket://x: no bundle on the device"), False),
        (client.DeviceError(Err.AUTH_REQUIRED, Msg.INFER, "this device requires AUTH"), True),
        (client.DeviceError(Err.BAD_FRAME, Msg.INFER, "bad CRC"), True),
        (client.DeviceError(Err.NO_BUNDLE, Msg.INFER, "no bundle"), False),
        (client.DeviceError(Err.AUTH_FAILED, Msg.AUTH, "wrong key"), False),
        (client.DeviceError(Err.HASH_MISMATCH, Msg.UPLOAD_END, "bytes differ"), False),
        (ValueError("a bug"), False),
    ],
)
def test_what_reconnecting_may_cure(error, retried):
    assert retryable(error) is retried


def test_a_device_never_reached_fails_at_once(tmp_path):
    calls = []
    with pytest.raises(EdgefpError, match="cannot open"):
        reconnecting(str(tmp_path / "no-such-port"), calls.append, sleep=calls.append)
    assert calls == []


def test_link_faults_are_retried_and_logged_refusals_raised(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edgefp")
    agent, attempts, waits = Agent(str(tmp_path / "agent"), "pi"), [], []

    def flaky(device):
        attempts.append(device.info.board)
        if len(attempts) == 1:
            raise client.LinkError("the link dropped")
        if len(attempts) == 2:
            raise client.DeviceError(Err.AUTH_REQUIRED, Msg.INFER, "the device reset")
        return "done"

    with serving(agent, "tcp") as url:
        assert reconnecting(url, flaky, sleep=waits.append, retry_s=0.25) == "done"
        assert attempts == ["pi"] * 3 and waits == [0.25, 0.25]
        messages = [record.getMessage() for record in caplog.records]
        assert sum("lost" in text for text in messages) == 2 and sum("reconnected" in text for text in messages) == 2
        with pytest.raises(EdgefpError, match="no bundle"):  # the agent has none: asking again would not help
            reconnecting(url, client.manifest, sleep=waits.append)
        assert len(waits) == 2
        assert reconnecting(url, flaky, done=lambda: True) is None  # done before the first connection
