import json

import numpy as np
import pytest

from edgefp import bench
from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError
from edgefp.firmware_host.boards import BOARDS, fit_problems, get_board
from tests.cli.test_cli import edgefp


def test_bench_bundle_follows_the_schema(digits_bundle):
    _, out = digits_bundle
    result = bench.bench_bundle(Bundle.load(out), "tflm", runs=30, warmup=5)
    assert result["schema"] == "edgefp.bench" and result["runs"] == 30 and len(result["samples_us"]) == 30
    latency = result["latency_us"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert latency["mean"] == pytest.approx(np.mean(result["samples_us"]))
    assert result["throughput_per_s"] == pytest.approx(1e6 / latency["mean"])
    assert result["arena_bytes"] == Bundle.load(out).manifest.tflm_arena_bytes and result["target"]["runtime"] == "tflm"


def test_compare_gives_ratios_and_direction():
    a = bench.summarize(
        [10.0, 10.0], target={}, warmup=0, init_ms=1.0, first_inference_us=20.0, model_bytes=100, arena_bytes=None
    )
    b = bench.summarize(
        [20.0, 20.0], target={}, warmup=0, init_ms=1.0, first_inference_us=20.0, model_bytes=100, arena_bytes=None
    )
    rows = {row["metric"]: row for row in bench.compare(a, b)}
    assert rows["latency_us.mean"]["ratio"] == 2.0 and rows["latency_us.mean"]["b_better"] is False
    assert rows["throughput_per_s"]["ratio"] == 0.5 and rows["throughput_per_s"]["b_better"] is False
    assert rows["model_bytes"]["b_better"] is None and "arena_bytes" not in rows


def test_cli_bench_writes_and_compares(digits_bundle, tmp_path):
    _, out = digits_bundle
    for runtime in ("litert", "tflm"):
        result = edgefp(
            "bench", out, "--runtime", runtime, "-n", "20", "--warmup", "2", "--out", str(tmp_path / f"{runtime}.json")
        )
        assert result.returncode == 0, result.stderr
    result = edgefp("bench", "compare", str(tmp_path / "litert.json"), str(tmp_path / "tflm.json"), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert {row["metric"] for row in rows} >= {"latency_us.p50", "throughput_per_s", "model_bytes"}


def test_bad_bench_file_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"schema": "something else"}')
    with pytest.raises(EdgefpError, match="not an edgefp.bench v1 result"):
        bench.load(str(path))
    with pytest.raises(EdgefpError, match="no such bench file"):
        bench.load(str(tmp_path / "missing.json"))


def test_boards_say_by_how_much_a_model_does_not_fit():
    board = get_board("nrf52840")
    assert board.flash_bytes == 1 << 20 and board.ram_bytes == 256 << 10
    assert fit_problems(board, 1000, 1000) == []
    problems = fit_problems(board, (1 << 20) + 5, (256 << 10) + 7)
    assert "5 bytes more flash" in problems[0] and "7 bytes more RAM" in problems[1]
    assert {"nrf52840", "esp32s3", "rp2040", "stm32f746", "pi", "coral"} <= set(BOARDS)
    with pytest.raises(EdgefpError, match="unknown board 'uno'"):
        get_board("uno")
