import os
import re

import numpy as np
import pytest

from edgefp import bench, data
from edgefp.bundle import Bundle
from edgefp.fsutil import MARKER
from edgefp.report import build_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BOARD = {"name": "nrf52840", "flash_bytes": 1048576, "ram_bytes": 262144, "description": "Nordic <nRF52840>"}


def bench_result(label: str, mean_us: float) -> dict:
    samples = np.random.default_rng(0).lognormal(np.log(mean_us), 0.1, 200)
    target = {"kind": "host", "runtime": "litert", "bundle": "digits04", "label": label}
    return bench.summarize(
        samples,
        target=target,
        warmup=10,
        init_ms=2.5,
        first_inference_us=3 * mean_us,
        model_bytes=31928,
        arena_bytes=None,
    )


def images(index: str) -> tuple[str, list[str]]:
    with open(index, encoding="utf-8") as handle:
        page = handle.read()
    return page, re.findall(r'<img src="([^"]+)"', page)


@pytest.fixture(scope="module")
def bundle(digits_bundle):
    return Bundle.load(digits_bundle[1])


def test_full_report_is_self_contained(bundle, tmp_path):
    ood = data.load("digits:test:5-9")
    ood.name = "<script>alert(1)</script>"
    bench = [bench_result("host <litert>", 12.0), bench_result("nrf52840 tflm", 37.0)]
    index = build_report(bundle, data.load("digits:test:0-4"), [ood], bench, BOARD, str(tmp_path / "report"))

    assert index == str(tmp_path / "report" / "index.html") and os.path.isfile(index)
    page, srcs = images(index)
    assert sorted(srcs) == ["budget.png", "confusion.png", "fingerprint.png", "latency.png", "roc.png"]
    for src in srcs:
        with open(tmp_path / "report" / src, "rb") as handle:
            assert handle.read(8) == PNG_SIGNATURE
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "&lt;script&gt;" in page and "host &lt;litert&gt;" in page
    assert bundle.manifest.name in page and "AUROC" in page
    assert f"{bundle.manifest.flash_bytes / BOARD['flash_bytes']:.1%}" in page
    assert "does not fit" not in page


def test_minimal_report_leaves_out_optional_figures(bundle, tmp_path):
    out = str(tmp_path / "report")
    tiny = {"name": "tiny", "flash_bytes": 16384, "ram_bytes": 4096}
    build_report(bundle, data.load("digits:test:0-4"), [data.load("digits:test:5-9")], [], tiny, out)
    _, srcs = images(os.path.join(out, "index.html"))
    assert "budget.png" in srcs and "does not fit" in images(os.path.join(out, "index.html"))[0]

    unlabelled = data.load("digits:test:0-4")
    unlabelled.y = None
    index = build_report(bundle, unlabelled, [], [], None, out, force=True)  # the same directory, rewritten
    page, srcs = images(index)
    assert srcs == ["fingerprint.png"]
    assert sorted(os.listdir(out)) == [MARKER, "fingerprint.png", "index.html"]
    assert "Summary" in page and "http" not in page
