"""The FiftyOne App in a browser: `synthaug fiftyone OUT --launch` (the real command, as a
subprocess) serves a small job's dataset on 127.0.0.1 only; headless Chromium sees its samples
listed with their `source` values and tags; SIGTERM stops the command and its App server.

Chromium is Debian's /usr/bin/chromium driven by Playwright (nothing is downloaded); the test
installs it with apt-get when it is missing and can be installed, and skips otherwise."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from jobs.config import parse_config
from jobs.runner import run_job
from augment.fiftyone_db import free_port
from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import cli_command, cli_env

pytest.importorskip("fiftyone")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

import psutil  # noqa: E402  (a FiftyOne dependency)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fiftyone_db", "ray_session")]

START_TIMEOUT_S = 600.0  # export + Brain + App server start, on two busy cores
PAGE_TIMEOUT_MS = 120_000
STOP_TIMEOUT_S = 60.0


def chromium() -> Path:
    """/usr/bin/chromium, installed with apt-get (as root, or through password-less sudo) when
    missing; skips the test only when it is missing and cannot be installed."""
    if CHROMIUM.is_file():
        return CHROMIUM
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if shutil.which("apt-get") is None or (prefix and shutil.which("sudo") is None):
        pytest.skip(f"{CHROMIUM} is missing and there is no apt-get{'' if not prefix else ' or sudo'} to install it")
    try:
        subprocess.run([*prefix, "apt-get", "install", "-y", "chromium"], capture_output=True, timeout=900,
                       check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"{CHROMIUM} is missing and `apt-get install -y chromium` failed: {error}")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing after `apt-get install -y chromium`")
    return CHROMIUM


class Output:
    """A subprocess's merged stdout/stderr, read by a thread; `wait_for` a line with some text."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of output
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: any(text in line for line in self.lines) or
                                          (self.lines and self.lines[-1] == ""), timeout) and \
                any(text in line for line in self.lines)

    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="module")
def small_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 simulator digits (real) and their 30 classical children, plus a 10-row holdout."""
    out = tmp_path_factory.mktemp("fo-app") / "job"
    run_job(parse_config({
        "name": "fo-app", "seed": 4, "source": {"kind": "simulator", "family": "digits", "frames": 40,
                                                "image_size": 32},
        "split": {"holdout": 0.25}, "quota": {"multiplier": 2.0},
        "augment": {"transforms": [{"name": "Affine", "p": 1.0, "params": {"rotate": [-20, 20]}}]},
        "report": {"enabled": False}, "output": {"rows_per_shard": 400}}), out)
    return out


def listening(processes: list[psutil.Process]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket these processes listen on."""
    found = []
    for process in processes:
        try:
            found += [(process.pid, c.laddr.ip, c.laddr.port) for c in process.net_connections("inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    return found


def test_app_lists_samples_and_sources_on_loopback_and_stops_on_sigterm(small_job: Path, tmp_path: Path) -> None:
    browser_path = chromium()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    app = subprocess.Popen(cli_command("fiftyone", str(small_job), "--launch", "--port", str(port)), env=cli_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(app)
    descendants: list[psutil.Process] = []
    try:
        assert output.wait_for(f"FiftyOne App: {url}", START_TIMEOUT_S), output.text()
        assert "fiftyone dataset 'fo-app': 70 samples" in output.text()
        # 1. The App server (a grandchild: FiftyOne's service wrapper starts it) listens on
        # 127.0.0.1 only; the database is the session's private mongod, so none of ours.
        descendants = psutil.Process(app.pid).children(recursive=True)
        sockets = listening([psutil.Process(app.pid), *descendants])
        assert (port in {p for _, _, p in sockets}) and {a for _, a, _ in sockets} == {"127.0.0.1"}, sockets

        # 2. The page lists the 70 samples, and each tile shows its source and tags.
        with sync_api.sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                tmp_path / "chromium-profile", executable_path=browser_path, args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1400, "height": 900})
            # The App's own Playwright switch: no analytics, no Enterprise pop-over or
            # query-performance toast over the sidebar.
            context.add_init_script("window.IS_PLAYWRIGHT = true;")
            try:
                page = context.new_page()
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                page.goto(url, wait_until="domcontentloaded")
                # The grid header: "<count> samples".
                sync_api.expect(page.locator('[data-cy="entry-counts"]')).to_have_text("70 samples",
                                                                                       timeout=PAGE_TIMEOUT_MS)
                page.locator('[data-cy="looker"]').first.wait_for()
                # Show `source` and the sample tags on the tiles (sidebar checkboxes).
                page.locator('[data-cy="checkbox-source"]').click()
                page.locator('[data-cy="checkbox-tags"]').click()
                sources = page.locator('[data-cy="tag-source"]')
                sync_api.expect(sources.first).to_be_visible()
                assert set(sources.all_inner_texts()) == {"simulator", "classical"}
                for tag in ("real", "synthetic", "classical"):
                    assert page.locator(f'[data-cy="tag-tags-{tag}"]').count() > 0, tag
                page.screenshot(path=tmp_path / "fiftyone_app.png")
            finally:
                context.close()
        assert (tmp_path / "fiftyone_app.png").stat().st_size > 10_000

        # 3. SIGTERM (as from a service manager): the command stops the App and exits cleanly.
        app.send_signal(signal.SIGTERM)
        assert app.wait(timeout=STOP_TIMEOUT_S) == 0, output.text()
        assert output.wait_for("FiftyOne App: stopped", 10), output.text()
        deadline = time.monotonic() + 10
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in descendants) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p.pid for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        # Whatever failed above: no command, service wrapper or App server is left behind.
        leftovers = list(descendants)
        if app.poll() is None:
            try:
                leftovers += psutil.Process(app.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            app.kill()
        for process in leftovers:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        app.wait(timeout=30)
