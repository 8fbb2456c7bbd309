"""The review page in a real browser (Debian's chromium, headless, driven by selenium): it loads offline
from the loopback server, a person labels with the keyboard (known classes, a new class by name, noise),
every label reaches the labels file as it is given, and none is lost when the server or the page dies."""

import json
import os
import shutil
import time
import urllib.request

import numpy as np
import pytest

from edgefp import data
from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError
from edgefp.review import Review, ReviewServer
from tests.cli.test_cli import edgefp

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (make browser-tools)"
)


@pytest.fixture(scope="module")
def field(digits_bundle, tmp_path_factory):
    """Field data: known digits 0-4, unseen 5s, and noise; with each sample's true class."""
    known, fives = data.load("digits:test:0-4"), data.load("digits:test:5")
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 1, (6, 8, 8, 1)).astype(np.float32)
    x = np.concatenate([known.x[:20], fives.x[:25], noise])
    truth = [*map(str, known.y[:20]), *["five"] * 25, *["noise"] * 6]
    path = str(tmp_path_factory.mktemp("field") / "field.npz")
    np.savez(path, x=x)
    return path, truth


def open_review(path, bundle_path, port=0):
    review = Review(path, bundle=Bundle.load(bundle_path), reference=data.load("digits:train:0-4"))
    return review, ReviewServer(review, port).start()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(flag)
    for flag in ("--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait(condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("the page did not get there in time")


def current(driver) -> str | None:
    return driver.execute_script("return document.getElementById('sample').dataset.id || null")


def status(driver) -> str:
    return driver.execute_script("return document.getElementById('status').textContent")


def key_for(driver, name: str) -> str | None:
    """The key the page shows for class ``name`` (None when it has none yet)."""
    return driver.execute_script(
        "for (const b of document.querySelectorAll('#choices button[data-key]'))"
        "  if (b.lastChild.textContent.replace(' (new)', '') === arguments[0]) return b.dataset.key;"
        "return null;",
        name,
    )


def give(driver, truth: str) -> None:
    """Label the sample on show as a person would: its class's key, 'n' and a name, or 'x' for noise."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    shown = current(driver)
    key = "x" if truth == "noise" else key_for(driver, truth)
    if key is None:
        ActionChains(driver).send_keys("n").perform()
        wait(lambda: driver.execute_script("return !document.getElementById('new-class').hidden"))
        ActionChains(driver).send_keys(truth + Keys.ENTER).perform()
    else:
        ActionChains(driver).send_keys(key).perform()
    wait(lambda: driver.execute_script("return !!state.labels[arguments[0]]", shown))


def saved_labels(path: str) -> dict:
    with open(path) as handle:
        saved = json.load(handle)
    names = {c["value"]: c["name"] for c in saved["new_classes"]} | {v: str(v) for v in range(5)}
    return {
        key: names[label["value"]] if label["kind"] == "class" else "noise" for key, label in saved["labels"].items()
    }


@needs_browser
def test_a_person_labels_with_the_keyboard_and_nothing_is_lost(field, digits_bundle, browser):
    path, truth = field
    review, server = open_review(path, digits_bundle[1])
    labels_file = review.store.path
    try:
        browser.get(server.url)
        wait(lambda: current(browser))
        queue = [item["id"] for item in review.queue.describe()["queue"]]
        scores = [item["score"] for item in review.queue.describe()["queue"]]
        assert scores == sorted(scores, reverse=True) and len(queue) >= 20  # most out of distribution first
        assert browser.execute_script("return document.querySelectorAll('#neighbours figure').length") == 3
        assert browser.execute_script("return document.querySelectorAll('#view canvas').length") == 1
        layers = browser.execute_script("return [...document.querySelectorAll('#evidence .bar')].length")
        assert layers == len(review.queue.layers) > 0
        given = {}
        for _ in range(12):
            shown = current(browser)
            give(browser, truth[int(shown)])
            given[shown] = truth[int(shown)]
        wait(lambda: status(browser).startswith("all labels saved"))
        assert saved_labels(labels_file) == given
        port = int(server.url.rsplit(":", 1)[1].strip("/"))
        server.close()  # the server dies: labels wait in the page
        for _ in range(3):
            shown = current(browser)
            give(browser, truth[int(shown)])
            given[shown] = truth[int(shown)]
        wait(lambda: "NOT SAVED" in status(browser))
        assert len(saved_labels(labels_file)) == 12
        review, server = open_review(path, digits_bundle[1], port)  # it comes back, with what it had saved
        wait(lambda: status(browser).startswith("all labels saved"), timeout=20)
        assert saved_labels(labels_file) == given
        browser.refresh()  # the page dies and comes back: it resumes at the first sample not labelled
        wait(lambda: current(browser))
        first_open = next(key for key in queue if key not in given)
        assert current(browser) == first_open
        for _ in range(len(queue) - len(given)):
            shown = current(browser)
            give(browser, truth[int(shown)])
            given[shown] = truth[int(shown)]
        wait(lambda: status(browser).startswith("all labels saved"))
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(browser).send_keys("e").perform()
        wait(lambda: status(browser).startswith("wrote "))
    finally:
        server.close()
    assert saved_labels(labels_file) == given
    trained = data.load(review.export_path)
    expected = [truth[int(key)] for key in sorted(given, key=int) if given[key] != "noise"]
    assert [trained.label_names[int(y)] for y in trained.y] == expected
    assert trained.label_names[5] == "five" and len(trained) == len(expected)


def test_the_server_answers_only_this_machine_and_refuses_bad_labels(field, digits_bundle, tmp_path):
    path = shutil.copy(field[0], str(tmp_path / "field.npz"))
    review, server = open_review(path, digits_bundle[1])
    first = review.queue.describe()["queue"][0]["id"]

    def post(body, headers=None):
        request = urllib.request.Request(
            server.url + "api/label", json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as refused:
            return refused.code, json.load(refused)

    try:
        page = urllib.request.urlopen(server.url).read().decode()
        assert "review.js" in page and "http" not in page.replace(server.url, "")  # nothing from elsewhere
        assert post({"id": first, "label": {"kind": "class", "value": 42}})[0] == 400
        assert post({"id": first, "label": {"kind": "class", "name": "\x00"}})[0] == 400
        assert post({"id": "nope", "label": {"kind": "noise"}})[0] == 400
        assert post({"id": first, "label": {"kind": "noise"}}, {"Origin": "http://evil.example"})[0] == 403
        assert post({"id": first, "label": {"kind": "class", "name": "four"}})[0] == 200
        assert post({"id": first, "label": {"kind": "class", "name": "4"}})[1]["label"]["value"] == 4  # known, by name
    finally:
        server.close()
    assert not os.path.exists(review.export_path)
    with pytest.raises(EdgefpError, match="not a labels file"):
        (tmp_path / "bad.json").write_text("[]")
        Review(path, labels_path=str(tmp_path / "bad.json"))
    result = edgefp("review", path, "--bundle", digits_bundle[1], "--export", str(tmp_path / "t.npz"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["classes"] == {"4": 1}
    kept = edgefp("review", path, "--export", str(tmp_path / "t.npz"))  # an earlier export: kept without --force
    assert kept.returncode == 2 and "pass --force to replace it" in kept.stderr, kept.stderr
    again = edgefp("review", path, "--export", str(tmp_path / "t.npz"), "--force")  # replaced with it
    assert again.returncode == 0, again.stderr
    other = str(tmp_path / "other.npz")
    np.savez(other, x=np.zeros((2, 8, 8, 1), np.float32), y=np.zeros(2, np.int64))
    for foreign in (path, other):  # the data itself, a file edgefp did not export
        before = open(foreign, "rb").read()
        refused = edgefp("review", path, "--export", foreign, "--force")
        assert refused.returncode == 2 and refused.stderr.startswith("edgefp: error: "), refused.stderr
        assert "not a training file exported from" in refused.stderr and open(foreign, "rb").read() == before
