"""The real Dagster UI in a real browser: ``dagster-webserver`` (a subprocess, on the workspace, bound
to loopback) serves the session's micro run (``conftest.micro_run``) and headless Chromium renders it.

A person reads there: influence_scores' latest materialization with its ``top_examples`` table, which
carries the user's own prompt as text (behind the UI's ``[Show Markdown]`` link: the asset page
inlines markdown only below 1000 characters, so the test clicks it, as a person would), and the
checks of steering_operators: the latest result names the shard it checked, and the check's
execution history has one result per shard, each naming its shard. (The UI's own "Partition" field
of a check result stays empty: Dagster's asset checks are not partitioned, so the shard is in the
description and the ``partition`` metadata.)

The page is a React app that fetches GraphQL, so it is driven over the DevTools protocol (one
headless Chromium, ``--remote-debugging-port``) and read once it shows the data: a plain
``--dump-dom`` cannot click. ``websockets`` comes with ``dagster-webserver`` (``uvicorn[standard]``).
Screenshots of the table and of the checks go to ``tmp_path``, or to ``$STRIDE_UI_SCREENSHOT`` (and
``<stem>_checks.png`` beside it). About 20 s beyond the shared run, most of it the webserver
loading the code location.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
SERVER_TIMEOUT = 120  # seconds for the webserver to serve /server_info and load the code location
PAGE_TIMEOUT = 45  # seconds for a page to show what is awaited
SCREENSHOT = os.environ.get("STRIDE_UI_SCREENSHOT")  # where to keep the table's screenshot (default: tmp_path)

pytestmark = pytest.mark.slow

LOCATION_QUERY = ("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                  "locationOrLoadError { __typename ... on PythonError { message } } } } } }")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, body: dict | None = None, timeout: float = 5) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def _stop(proc: subprocess.Popen) -> None:
    """End ``proc`` and its process group (the webserver's code server), SIGTERM first."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # a code server left in the group after the webserver exited
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def _webserver(micro_run, tmp_path: Path) -> Iterator[str]:
    """``dagster-webserver -w workspace.yaml`` on the micro run's instance; yields its base URL once the
    code location ``stride`` is loaded."""
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(micro_run.dagster_home), "STRIDE_PROFILE": "micro",
           "STRIDE_HOME": str(micro_run.store), "MLFLOW_TRACKING_URI": micro_run.mlflow_uri,
           "DAGSTER_DISABLE_TELEMETRY": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = tmp_path / "webserver.log"
    binary = shutil.which("dagster-webserver", path=str(Path(sys.executable).parent)) or "dagster-webserver"
    with log.open("w") as out:
        proc = subprocess.Popen([binary, "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT
        status = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"dagster-webserver exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                assert json.loads(_get(f"{base}/server_info"))["dagster_webserver_version"]
                entries = json.loads(_get(f"{base}/graphql", {"query": LOCATION_QUERY}))["data"]["workspaceOrError"][
                    "locationEntries"]
                status = [(e["name"], e["loadStatus"], e["locationOrLoadError"]) for e in entries]
                if status and all(s == "LOADED" for _, s, _ in status):
                    break
            except (OSError, ValueError, KeyError, TypeError):  # not serving yet, or the workspace not yet loaded
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"dagster-webserver did not load the code location in {SERVER_TIMEOUT} s ({status}):\n"
                        f"{log.read_text()[-4000:]}")
        assert [(n, e["__typename"]) for n, _, e in status] == [("stride", "RepositoryLocation")], status
        yield base
    finally:
        _stop(proc)


class Page:
    """One page of a headless Chromium, driven over the DevTools protocol."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self._ws = connect(ws_url, max_size=None, open_timeout=30)
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:  # events (none enabled) and answers to earlier calls are skipped
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait(self, expression: str, what: str, timeout: float = PAGE_TIMEOUT):
        """The truthy value of ``expression`` once the page gives one; fails with the page's text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:  # no document yet, or a navigation replaced it
                value = None
            if value:
                return value
            time.sleep(0.25)
        text = self.js("document.body ? document.body.innerText : ''") or ""
        pytest.fail(f"the page {self.js('location.href')} did not show {what} in {timeout} s; it shows:\n{text[:3000]}")

    def text(self) -> str:
        return self.js("document.body.innerText")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        self._ws.close()


@contextmanager
def _browser(chromium: str, tmp_path: Path) -> Iterator[Page]:
    profile = tmp_path / "chromium-profile"
    log = tmp_path / "chromium.log"
    with log.open("w") as out:
        proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,2000",
                                 "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={profile}",
                                 "about:blank"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    page = None
    try:
        active = profile / "DevToolsActivePort"  # Chromium writes its port there
        deadline = time.monotonic() + 30
        while not (active.is_file() and len(active.read_text().split()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"headless Chromium gave no DevTools port:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        port = active.read_text().split()[0]
        targets = json.loads(_get(f"http://127.0.0.1:{port}/json/list"))
        page = Page(next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"))
        page.call("Page.enable")
        page.call("Emulation.setDeviceMetricsOverride", width=1400, height=2000, deviceScaleFactor=1, mobile=False)
        # the UI greets a new browser on a loopback origin with a "Join the Dagster community" dialog; as
        # its own "Skip" does, this browser has seen it (its localStorage key ``communityNux``)
        page.call("Page.addScriptToEvaluateOnNewDocument", source="localStorage.setItem('communityNux', '\"1\"')")
        yield page
    finally:
        if page is not None:
            page.close()
        _stop(proc)


# the metadata table row of an entry, by its label; the link that opens a long markdown value
ROW = """[...document.querySelectorAll('tr')].find(tr => tr.cells.length > 1 && tr.cells[0].innerText.trim() === %s)"""
SHOW_MARKDOWN = f"""(() => {{ const row = {ROW}; if (!row) return false;
  const link = [...row.querySelectorAll('a')].find(a => a.innerText.includes('Show Markdown'));
  if (!link) return false; link.click(); return true; }})()"""
DIALOG_TEXT = """(() => { const d = document.querySelector('.bp5-dialog, .bp4-dialog, [role=dialog]');
  const t = d && d.querySelector('table'); return t ? t.innerText : ''; })()"""


CLICK = """(() => { const found = [...document.querySelectorAll('button, a, [role=tab]')].filter(
  e => e.innerText && e.innerText.trim() === %s); if (!found.length) return false; found[found.length - 1].click();
  return true; })()"""
SETTLED = """(() => { const d = document.querySelector('.bp5-dialog, .bp4-dialog, [role=dialog]');
  return !!d && getComputedStyle(d).opacity === '1' && document.getAnimations().every(a =>
    a.playState !== 'running' || !(a.effect && a.effect.target && a.effect.target.closest('.bp5-portal, .bp4-portal'))); })()"""


def test_the_dagster_ui_shows_the_prompt_in_top_examples_and_checks_by_partition(
        micro_run, chromium: str, tmp_path: Path) -> None:
    assert micro_run.results and all(r.success for r in micro_run.results)
    prompt = micro_run.cfg.queries.prompts[0]
    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "dagster_ui.png"
    with _webserver(micro_run, tmp_path) as base, _browser(chromium, tmp_path) as page:
        # influence_scores' events, the default batch: its latest materialization and its metadata
        page.open(f"{base}/assets/influence_scores?view=events&partition=default")
        page.wait(f"!!({ROW % json.dumps('top_examples')})", "the top_examples metadata entry")
        for label in ("queries", "r2_mean", "mlflow_run"):  # the other entries of the same materialization
            page.wait(f"!!({ROW % json.dumps(label)})", f"the {label} metadata entry")
        page.wait("document.body.innerText.includes('Partition default materialized in run')",
                  "the materialization of partition default")
        assert page.wait(SHOW_MARKDOWN % json.dumps("top_examples"), "the [Show Markdown] link of top_examples")
        table = page.wait(DIALOG_TEXT, "the top_examples table in a dialog")
        assert prompt[:30] in table  # the user's own prompt, rendered as text (the markdown's escapes undone)
        rows = [line.split("\t") for line in table.strip().split("\n")]
        queries = pl.read_parquet(micro_run.store / "query_set" / "default" / "queries.parquet")
        assert {r[0] for r in rows[1:]} == set(queries["query_id"])  # every query of the batch, by id
        assert any(r[1].startswith(prompt[:30]) for r in rows[1:])  # the prompt in its query column
        for _ in range(2):  # the dialog's opening transition ended, and stays so (the page polls and re-renders)
            page.wait(SETTLED, "the dialog's opening transition to end")
            time.sleep(0.5)
        page.wait(SETTLED, "the dialog's opening transition to end")
        assert [h.strip() for h in rows[0]] == ["query_id", "query", "rank", "example_id", "score", "example"]
        assert "Join the Dagster community" not in page.text()  # nothing over the table
        png = page.screenshot()
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.write_bytes(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000, len(png)

        # steering_operators' checks: the latest result says which shard it checked, and the check's
        # execution history lists one result per shard, each naming its shard
        page.open(f"{base}/assets/steering_operators?view=checks")
        described = page.wait("(document.body.innerText.match(/steering_operators\\[part-\\d{4}\\] (passed|FAILED): [^\\n]+/)"
                              " || [''])[0]", "a check result naming its partition")
        assert described.startswith(("steering_operators[part-0000] passed: ", "steering_operators[part-0001] passed: "))
        page.wait("(t => t.includes('operators_favour_members') && t.includes('operators_not_collapsed'))"
                  "(document.body.innerText)", "both checks of steering_operators in the list")
        assert page.wait(CLICK % json.dumps("Execution history"), "the check's Execution history tab")
        history = page.wait("(t => t.includes('steering_operators[part-0000] passed: ') && "
                            "t.includes('steering_operators[part-0001] passed: ') && t)(document.body.innerText)",
                            "one result per shard in the execution history")
        assert "Newer" in history and "Older" in history  # the history's own pager: the table is the history
        checks_png = page.screenshot()
        shot.with_name(shot.stem + "_checks.png").write_bytes(checks_png)
        assert len(checks_png) > 20_000, len(checks_png)
