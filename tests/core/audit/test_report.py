"""The HTML report loads in headless Chromium without console errors or network requests and
shows the objects of the log (driven over the DevTools protocol)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    why = "no Chromium found (Debian: apt-get install chromium)"
    if os.environ.get("BASTION_REQUIRE_CHROMIUM") == "1" or os.environ.get("CI"):
        pytest.fail(why + "; CI requires it (.ci/run installs it)")
    pytest.skip(why)


class Page:
    """One headless Chromium tab: open a URL, collect errors and requests, evaluate JS."""

    def __init__(self, profile: Path) -> None:
        import websocket

        self.process = subprocess.Popen(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            target = next(t for t in json.load(reply) if t["type"] == "page")
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30,
                                              suppress_origin=True)  # fmt: skip
        self.next_id = 0
        self.errors: list[str] = []
        self.requests: list[str] = []
        for method in ("Runtime.enable", "Log.enable", "Network.enable", "Page.enable"):
            self.call(method)

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self._event(message)

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(
                params["exceptionDetails"].get("exception", {}).get("description")
                or params["exceptionDetails"]["text"]
            )
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append(
                " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Page.loadEventFired":
            self.loaded = True

    def open(self, url: str) -> None:
        self.loaded = False
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while not self.loaded and time.monotonic() < deadline:
            self._event(json.loads(self.ws.recv()))
        assert self.loaded, f"{url} did not finish loading"
        self.evaluate("new Promise(r => setTimeout(r, 200))")  # late errors surface here

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def page(tmp_path: Path):
    browser = Page(tmp_path / "profile")
    yield browser
    browser.close()


def test_the_page_catches_console_errors(page, tmp_path):
    """The checks below can fail: a broken page is caught."""
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>console.error('boom'); undefinedFunction();</script>"
                      "<img src='https://example.invalid/x.png'></body></html>")  # fmt: skip
    page.open(broken.as_uri())
    assert any("boom" in e for e in page.errors)
    assert any("undefinedFunction" in e for e in page.errors)
    assert any(url.startswith("https://") for url in page.requests)


def test_report_loads_without_errors_and_shows_the_objects(incident, audit, page, tmp_path):
    report = tmp_path / "report.html"
    result = audit("report", incident.db, "-o", report)
    assert result.exit_code == 0 and "log intact" in result.output
    page.open(report.as_uri())
    assert page.errors == []
    assert page.requests == [report.as_uri()]  # nothing fetched but the file itself
    ids = page.evaluate("Array.from(document.querySelectorAll('section.object'))"
                        ".map(s => s.id)")  # fmt: skip
    expected = [incident.x, incident.y, incident.z, incident.w, incident.s]
    assert sorted(ids) == sorted(f"object-{i}" for i in expected)
    assert page.evaluate("document.body.getAttribute('data-ready')") == str(len(expected))
    assert page.evaluate("document.getElementById('verdict').textContent") == "intact"
    graph = page.evaluate(f"document.getElementById('object-{incident.z}').textContent")
    assert f"moved to {incident.m2}" in graph and "fetched by me" in graph
    marks = page.evaluate("document.querySelectorAll('#timeline-svg circle').length")
    assert marks == sum(1 for _ in sqlite3.connect(incident.db).execute(
        "select 1 from bastion_events"))  # fmt: skip
    # the filter works: only the objects whose lineage mentions Tensor.sum stay
    shown = page.evaluate("(() => { const f = document.getElementById('filter');"
                          " f.value = 'tensor.sum'; f.dispatchEvent(new Event('input'));"
                          " return Array.from(document.querySelectorAll('section.object'))"
                          ".filter(s => !s.hidden).map(s => s.id); })()")  # fmt: skip
    assert f"object-{incident.s}" in shown and f"object-{incident.y}" in shown
    assert f"object-{incident.w}" not in shown  # w = z * 2 was cleared: no sum in its lineage
    assert page.errors == []


def test_a_long_log_gets_a_histogram(incident, audit, page, tmp_path):
    report = tmp_path / "report.html"
    assert audit("report", incident.db, "-o", report, "--max-events", 5,
                 "--max-objects", 2).exit_code == 0  # fmt: skip
    page.open(report.as_uri())
    assert page.errors == [] and page.requests == [report.as_uri()]
    assert page.evaluate("document.querySelectorAll('#timeline rect').length") > 0
    assert page.evaluate("document.querySelectorAll('table.events tbody tr').length") == 5
    assert page.evaluate("document.querySelectorAll('section.object').length") == 2
    assert "raise --max-objects" in page.evaluate("document.getElementById('objects').textContent")


def test_a_tampered_log_cannot_inject_markup(incident, audit, page, tmp_path):
    with sqlite3.connect(incident.db) as conn:
        conn.execute(
            "update bastion_events set peer = ? where seq = 1",
            ("<script>window.injected = 1</script><img src=x onerror=alert(1)>",),
        )
    report = tmp_path / "report.html"
    assert audit("report", incident.db, "-o", report).exit_code == 0
    page.open(report.as_uri())
    assert page.errors == [] and page.evaluate("window.injected === undefined") is True
    assert page.evaluate("document.getElementById('verdict').textContent") == "NOT intact"
    assert page.requests == [report.as_uri()]
