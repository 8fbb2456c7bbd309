"""An MQTT fleet through one local Mosquitto (docs/fleet.md): events at scale, and a deploy to many devices.

1. events: ``--agents`` simulated devices (500), spread over ``--processes`` worker processes, each a
   broker client of its own with the device side's status, last will and events (the same
   :class:`~edgefp.firmware_host.device.fleet.Member` as a real agent, fed no model): each publishes one
   OOD event per second at QoS 1 for ``--seconds``. One controller (:class:`edgefp.fleet.FleetWatch`,
   the loop of ``edgefp watch --broker``) takes them all; for each it counts the event in the device's
   window and decides whether the device drifts. Figures: events sent and received (QoS 1 events lost:
   numbers missing per device), and the latency from the event's time on the device to the controller's
   decision on it (p50, p99, max), sender and controller on this one machine.
2. deploy: ``--devices`` real agents (100, the `pi` board: LiteRT) in worker processes, all on the broker;
   ``fleet deploy`` sends one bundle (MLPerf Tiny's keyword-spotting model wrapped as a bundle, 54 KB) to
   every one at once. Figures: total time, per-device time (p50, max), the device protocol's bytes (what
   ``flash`` counts) and the bytes through the broker in and out (its own $SYS counters), per device.

    python -m benchmarks.fleet           # 500 agents x 20 s; deploy to 100
    python -m benchmarks.fleet --quick   # 100 agents x 5 s; deploy to 20
    python -m benchmarks.fleet --broker mqtt://HOST:PORT   # against a broker already running (events only)
    python -m benchmarks.fleet --amqtt PATH  # Mosquitto against amqtt (PATH: its `amqtt` program), MQTT 3.1.1

3. brokers (``--amqtt``): a Python broker from PyPI, amqtt, against Mosquitto for a demo-sized fleet. amqtt
   answers no MQTT 5 CONNECT (the fleet's session expiry), so both are measured with plain MQTT 3.1.1 clients:
   100 publishers at 10 QoS 1 messages per second each for 10 s, one subscriber; received, lost,
   latency p50 / p99, the broker's CPU seconds (from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from benchmarks.common import save
from edgefp.firmware_host.device.fleet import Member, status_payload
from edgefp.firmware_host.link import mqtt, protocol

MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "models")
EVENT = protocol.Event(0, 0, 1, 9.5, True, 120)  # what a device's OOD input reports (an agent adds layer errors)


class SimulatedDevice(Member):
    """A device on the broker without a model: its status says what a fresh agent's says."""

    def status(self) -> dict:
        hello = protocol.Hello(0, "edgefp-sim", "pi", "litert", 0, 0, [])
        return status_payload(self.device_id, self.tags, hello, protocol.Counters(), self.last_event)


def events_worker(url: str, first: int, count: int, seconds: float, start_at: float) -> None:
    """Devices first .. first + count - 1, one OOD event each per second from ``start_at`` (wall clock)."""
    broker = mqtt.parse_broker(url)
    devices = [
        SimulatedDevice(broker, f"sim-{i:05d}", {"group": str(i % 10)}, status_s=3600)
        for i in range(first, first + count)
    ]
    for device in devices:
        device.tick()
    sent = 0
    while time.time() < start_at:
        time.sleep(0.01)
    for second in range(int(seconds)):
        for index, device in enumerate(devices):
            due = start_at + second + index / count
            time.sleep(max(0.0, due - time.time()))
            device.publish_event(second + 1, EVENT, [3, 1, 4])
            sent += 1
    time.sleep(0.5)
    for device in devices:
        device.close()
    print(json.dumps({"sent": sent}))


def agents_worker(url: str, first: int, count: int) -> None:
    """Real agents (pi board) on the broker until stdin closes."""
    from edgefp.firmware_host.device.agent import Agent
    from edgefp.firmware_host.device.fleet import AgentMember

    broker, stop = mqtt.parse_broker(url), threading.Event()
    with tempfile.TemporaryDirectory(prefix="edgefp-bench-fleet-") as scratch:
        members = [
            AgentMember(Agent(os.path.join(scratch, str(i)), "pi"), broker, f"pi-{i:04d}", {"bench": "deploy"})
            for i in range(first, first + count)
        ]
        threads = [threading.Thread(target=member.run, args=(stop,), daemon=True) for member in members]
        for thread in threads:
            thread.start()
        print("ready", flush=True)
        sys.stdin.read()
        stop.set()
        for thread in threads:
            thread.join(10)


def _workers(args: list[list[str]], **options) -> list[subprocess.Popen]:
    command = [sys.executable, "-m", "benchmarks.fleet", "--worker"]
    return [subprocess.Popen(command + arg, text=True, stdout=subprocess.PIPE, **options) for arg in args]


def events(url: str, agents: int, processes: int, seconds: float) -> dict:
    from edgefp.fleet import FleetWatch

    latencies, received = [], {}
    lock = threading.Lock()

    def on_verdict(device_id: str, event: dict, verdict: str) -> None:
        now = time.time()
        with lock:
            latencies.append(now - event["time"])
            received.setdefault(device_id, set()).add(event["input"])

    watch = FleetWatch(mqtt.parse_broker(url), None, ood_rate=1.0, window=10**9, on_verdict=on_verdict)
    start_at = time.time() + 3 + agents / 200  # every worker connected by then
    share = -(-agents // processes)
    ranges = [(first, min(share, agents - first)) for first in range(0, agents, share)]
    workers = _workers([["events", url, str(a), str(b), str(seconds), str(start_at)] for a, b in ranges])
    sent = sum(json.loads(worker.communicate(timeout=seconds + 120)[0].splitlines()[-1])["sent"] for worker in workers)
    time.sleep(1.0)
    watch.close()
    with lock:
        got = sum(len(numbers) for numbers in received.values())
        lost = sum(int(seconds) - len(received.get(f"sim-{i:05d}", ())) for i in range(agents))
        lat = np.array(latencies) * 1000
    return {
        "agents": agents,
        "processes": processes,
        "seconds": seconds,
        "events_per_second": agents,
        "sent": sent,
        "received": got,
        "lost": lost,
        "duplicates": len(lat) - got,
        "latency_ms": {
            "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max()),
        },
    }


def deploy(url: str, devices: int, processes: int) -> dict:
    from edgefp.bundle import Bundle
    from edgefp.fleet import Controller
    from edgefp.fleet import deploy as deploy_fleet
    from edgefp.wrap import wrap

    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "kws.efp")
        wrap(os.path.join(MODEL, "mlperf_tiny_kws_ref.tflite"), path)
        archive = Bundle.load(path).archive_bytes()
    share = -(-devices // processes)
    ranges = [(first, min(share, devices - first)) for first in range(0, devices, share)]
    workers = _workers([["agents", url, str(a), str(b)] for a, b in ranges], stdin=subprocess.PIPE)
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready"
        counters: dict[str, int] = {}

        def on_sys(client, userdata, message):
            counters[message.topic] = int(message.payload)

        subscriptions = (("$SYS/broker/bytes/#", 0),)
        watcher = mqtt.connect(mqtt.parse_broker(url), "bench-sys", on_message=on_sys, subscriptions=subscriptions)
        with Controller(mqtt.parse_broker(url)) as controller:
            deadline = time.monotonic() + 60
            while len(controller.devices({"bench": "deploy"})) < devices and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2.2)  # two $SYS updates: the counters before
            before = dict(counters)
            start = time.monotonic()
            results = deploy_fleet(controller, archive, {"bench": "deploy"})
            total = time.monotonic() - start
            time.sleep(2.2)
            after = dict(counters)
        watcher.disconnect()
        watcher.loop_stop()
    finally:
        for worker in workers:
            worker.stdin.close()
        for worker in workers:
            worker.wait(60)
    through = {key.rsplit("/", 1)[1]: after[key] - before.get(key, 0) for key in after}
    seconds = np.array([result["seconds"] for result in results])
    ok = sum(result["result"] == "deployed" for result in results)
    protocol_bytes = sum(result["wire_bytes"] for result in results)
    return {
        "devices": devices,
        "processes": processes,
        "deployed": ok,
        "bundle_bytes": len(archive),
        "total_s": total,
        "per_device_s": {"p50": float(np.median(seconds)), "max": float(seconds.max())},
        "protocol_bytes": protocol_bytes,
        "broker_bytes": through,
        "broker_bytes_per_device": (through.get("received", 0) + through.get("sent", 0)) / devices,
        "bundle_bytes_sent_per_device_ratio": through.get("sent", 0) / devices / len(archive),
    }


def race(url: str, pid: int, clients: int = 100, rate: float = 10.0, seconds: float = 10.0) -> dict:
    """Plain MQTT 3.1.1 publishers (QoS 1) and one subscriber through the broker at ``url`` (process ``pid``)."""
    import paho.mqtt.client as paho

    broker = mqtt.parse_broker(url)

    def client(name: str):
        made = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv311)
        made.connect(broker.host, broker.port)
        made.loop_start()
        return made

    latencies, seen = [], set()
    subscriber = client("race-sub")

    def on_message(client, userdata, message) -> None:
        number, sent_at = message.payload.split(b" ")
        latencies.append(time.time() - float(sent_at))
        seen.add(number)

    subscriber.on_message = on_message
    subscriber.subscribe("race/#", qos=1)
    publishers = [client(f"race-{i}") for i in range(clients)]
    time.sleep(1.0)
    cpu = _cpu_seconds(pid)
    start, sent, infos = time.time(), 0, []
    while time.time() - start < seconds:
        for index, publisher in enumerate(publishers):
            infos.append(publisher.publish(f"race/{index}", f"{index}-{sent} {time.time()}", qos=1))
            sent += 1
        time.sleep(max(0.0, start + sent / clients / rate - time.time()))
    for info in infos:
        info.wait_for_publish(10)
    time.sleep(2.0)
    cpu = _cpu_seconds(pid) - cpu
    for made in (*publishers, subscriber):
        made.disconnect()
        made.loop_stop()
    lat = np.array(latencies) * 1000
    return {
        "sent": sent,
        "received": len(seen),
        "lost": sent - len(seen),
        "messages_per_second": sent / seconds,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
        "broker_cpu_s": cpu,
    }


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compare_brokers(amqtt: str) -> dict:
    """The same race through Mosquitto and through amqtt, one after the other."""
    figures = {}
    with mqtt.local_broker() as url:
        figures["mosquitto"] = race(url, int(subprocess.check_output(["pgrep", "-n", "-x", "mosquitto"])))
    with tempfile.TemporaryDirectory() as scratch:
        port = mqtt.free_port()
        config = os.path.join(scratch, "amqtt.yaml")
        with open(config, "w") as handle:
            handle.write(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n")
            handle.write("plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n")
        log = open(os.path.join(scratch, "amqtt.log"), "w")
        broker = subprocess.Popen([amqtt, "-c", config], stdout=log, stderr=log)
        try:
            time.sleep(3.0)
            figures["amqtt"] = race(f"mqtt://127.0.0.1:{port}", broker.pid)
        finally:
            broker.terminate()
            broker.wait(10)
            log.close()
    return figures


def markdown(figures: dict) -> str:
    e, d = figures["events"], figures.get("deploy")
    lines = [
        "# Fleet through one local Mosquitto",
        "",
        f"Broker: {figures['broker']}. Sender processes, broker and controller share one machine.",
        "",
        "| events | figure |",
        "|---|---|",
        f"| simulated agents (processes) | {e['agents']} ({e['processes']}) |",
        f"| OOD events, QoS 1, 1/s per agent, for | {e['seconds']:.0f} s |",
        f"| sent / received (unique) | {e['sent']} / {e['received']} |",
        f"| **QoS 1 events lost** | **{e['lost']}** |",
        f"| duplicates delivered | {e['duplicates']} |",
        f"| latency event -> controller decision p50 / p99 / max | {e['latency_ms']['p50']:.1f} / "
        f"{e['latency_ms']['p99']:.1f} / {e['latency_ms']['max']:.1f} ms |",
    ]
    if d:
        lines += [
            "",
            "| fleet deploy | figure |",
            "|---|---|",
            f"| devices (agents, processes) | {d['devices']} ({d['processes']}) |",
            f"| deployed | {d['deployed']} of {d['devices']} |",
            f"| bundle | {d['bundle_bytes']:,} bytes |",
            f"| **total time, all at once** | **{d['total_s']:.1f} s** |",
            f"| per device p50 / max | {d['per_device_s']['p50']:.1f} / {d['per_device_s']['max']:.1f} s |",
            f"| device protocol bytes, all devices | {d['protocol_bytes']:,} |",
            f"| **bytes through the broker** (in + out) | **{sum(d['broker_bytes'].values()):,}** "
            f"({d['broker_bytes_per_device']:,.0f} per device) |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--broker", default=None, help="Use this broker (events only) instead of a local Mosquitto.")
    parser.add_argument("--amqtt", default=None, help="Compare Mosquitto with the amqtt broker at this program.")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, url, *rest = args.worker
        if kind == "events":
            events_worker(url, int(rest[0]), int(rest[1]), float(rest[2]), float(rest[3]))
        else:
            agents_worker(url, int(rest[0]), int(rest[1]))
        return
    if args.amqtt:
        figures = compare_brokers(args.amqtt)
        lines = ["| MQTT 3.1.1, 100 publishers x 10 QoS 1 msg/s, 10 s | Mosquitto | amqtt |", "|---|---|---|"]
        for key, label in (("received", "received"), ("lost", "lost")):
            lines.append(f"| {label} | {figures['mosquitto'][key]:,} | {figures['amqtt'][key]:,} |")
        cpu = [f"{figures[name]['broker_cpu_s']:.2f} s" for name in ("mosquitto", "amqtt")]
        lines.append(f"| broker CPU | {cpu[0]} | {cpu[1]} |")
        for key in ("p50", "p99"):
            row = [f"{figures[name]['latency_ms'][key]:.1f} ms" for name in ("mosquitto", "amqtt")]
            lines.append(f"| latency {key} | {row[0]} | {row[1]} |")
        save("fleet_brokers", figures, "\n".join(lines) + "\n")
        return
    agents, seconds, devices = (100, 5, 20) if args.quick else (500, 20, 100)
    if args.broker:
        figures = {"broker": args.broker, "events": events(args.broker, agents, 4, seconds)}
        save("fleet_broker", figures, markdown(figures))
        return
    with mqtt.local_broker() as url:
        figures = {"broker": f"Mosquitto ({url})", "events": events(url, agents, 4, seconds)}
        figures["deploy"] = deploy(url, devices, 4)
    save("fleet", figures, markdown(figures))


if __name__ == "__main__":
    main()
