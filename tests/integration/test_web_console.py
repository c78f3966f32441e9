"""The web console in a real browser (headless Chromium) against a real cluster (the
processes `viridian up` runs): log in with the admin token, see both nodes with capacity
bars, a running partition, its console, and Stop turning it Off live. Also: `viridian up`
prints the console's URL and serves it."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import headless_chromium, log_in, missing, wait_until
from itutil import (
    REPO,
    ClusterHandle,
    ProcessRecord,
    kill_all,
    processes_under,
    running_cluster,
    short_tmp_dir,
    wait_for,
    wait_phase,
)
from viridian.v1 import types_pb2 as pb

from controller.etcd_server import free_port

pytestmark = pytest.mark.skipif(bool(missing()), reason=missing() or "browser available")


@pytest.fixture(scope="module")
def web_cluster(guests: dict[str, Path]) -> Iterator[tuple[ClusterHandle, str]]:
    web = f"127.0.0.1:{free_port()}"
    for handle in running_cluster("vit-web-", {"sleep": guests["sleep"]},
                                  controller_flags=("--web-listen", web)):
        yield handle, f"http://{web}/"


@pytest.fixture
def driver() -> Iterator[Any]:
    profile = Path(tempfile.mkdtemp(prefix="vit-chromium-"))
    d = headless_chromium(profile)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _text(driver: Any, css: str) -> str:
    """The visible text of the first element matching css ("" if none), read in the page
    in one step: live updates replace rows, and an element found in one call could be gone
    (stale) by the next."""
    text = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css)
    return str(text or "")


def _click(driver: Any, css: str) -> bool:
    """Click the first element matching css; False if none (for wait_until, which tries
    again when a live update replaced it between finding and clicking)."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    if not found:
        return False
    found[0].click()
    return True


def test_nodes_partitions_console_and_stop(web_cluster: tuple[ClusterHandle, str],
                                           driver: Any) -> None:
    from selenium.webdriver.common.by import By

    cluster, url = web_cluster
    res = cluster.cli("create", "web-sleeper", "--image", "sleep", "--", "3600")
    assert res.code == 0, str(res)
    running = wait_phase(cluster.stub, "web-sleeper", pb.PARTITION_PHASE_RUNNING)

    log_in(driver, url, cluster.cluster.admin_token())

    # Nodes: both, each with a vCPU and a memory bar; the partition's node shows 1 vCPU used.
    css = "#nodes tr[data-node]"

    def node_rows(d: Any) -> list[tuple[str, list[str]]]:
        """(node, text of each bar) of every row; the rows re-render, so read in one go."""
        return [(r.get_attribute("data-node"),
                 [b.text for b in r.find_elements(By.CSS_SELECTOR, ".bar")])
                for r in d.find_elements(By.CSS_SELECTOR, css)]

    rows = wait_until(driver, lambda d: len(got := node_rows(d)) == 2 and got,
                      "two node rows")
    assert sorted(node for node, _ in rows) == ["node-1", "node-2"]
    for node, bars in rows:
        assert len(bars) == 2, (node, bars)
        assert "vCPUs" in bars[0] and "GiB" in bars[1], (node, bars)
    host = running.status.node
    wait_until(driver, lambda d: "1 / 16 vCPUs" in _text(d, f'tr[data-node="{host}"]'),
               f"{host}'s vCPU bar counting the partition")
    fill_css = f'tr[data-node="{host}"] .bar .fill'
    style = wait_until(driver, lambda d: d.execute_script(
        "const e = document.querySelector(arguments[0]);"
        "return e ? e.getAttribute('style') : null;", fill_css), "the vCPU bar's fill")
    assert str(style).replace(" ", "") == "width:6.25%;"

    # Partitions: the running one, with its node and an uptime.
    wait_until(driver, lambda d: _click(d, "#nav-partitions"), "the Partitions link")
    row_css = '#partitions tr[data-partition="web-sleeper"]'
    wait_until(driver, lambda d: "Running" in _text(d, row_css), "web-sleeper Running in the list")
    assert host in _text(driver, row_css)
    # CPU and memory use, as its node measured them (WatchStats, every 2 s).
    wait_until(driver, lambda d: _text(d, f"{row_css} td.cpu").endswith("cores")
               and _text(d, f"{row_css} td.mem") not in ("", "-"), "web-sleeper's CPU and memory")

    # Its page: the console streams what the guest printed.
    wait_until(driver, lambda d: _click(d, f"{row_css} a"), "the partition's link")
    wait_until(driver, lambda d: "sleeping 3600" in _text(d, "#console"), "the console text")
    assert _text(driver, "#phase") == "Running"
    facts = _text(driver, "#facts")
    assert host in facts and "sleep" in facts and "1 / 64 MiB" in facts, facts
    wait_until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#events tbody tr"),
               "events of the partition")

    # Stop: the phase turns Off on the page by itself (the watch), no reload.
    wait_until(driver, lambda d: _click(d, "#btn-stop"), "the Stop button")
    wait_until(driver, lambda d: _text(d, "#phase") == "Off", "the phase to turn Off",
               timeout=30)
    wait_phase(cluster.stub, "web-sleeper", pb.PARTITION_PHASE_OFF)
    severe = [e["message"] for e in driver.get_log("browser")
              if e["level"] == "SEVERE" and "401" not in e["message"]]
    assert not severe, severe


def test_a_wrong_token_is_refused_on_the_page(web_cluster: tuple[ClusterHandle, str],
                                              driver: Any) -> None:
    from selenium.webdriver.common.by import By

    _, url = web_cluster
    driver.get(url)
    field = wait_until(driver, lambda d: d.find_elements(By.ID, "token"), "the login form")[0]
    field.send_keys("abcdef.0123456789abcdef0123456789abcdef")
    driver.find_element(By.ID, "login-submit").click()
    wait_until(driver, lambda d: "invalid or expired token" in _text(d, "#login-error"),
               "the refusal")


def test_up_prints_the_web_console_url_and_serves_it() -> None:
    data_dir = short_tmp_dir("vit-webup-")
    address = f"127.0.0.1:{free_port()}"
    ours = ProcessRecord()
    up = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "up", "--nodes", "1", "--data-dir",
         str(data_dir), "--listen", address],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=REPO, start_new_session=True)
    lines: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line)
            if line.startswith("Web console: ") or line.startswith("Try: "):
                break
        found = [m for ln in lines if (m := re.match(r"Web console: (http://\S+/)", ln))]
        assert found, "".join(lines)
        url = found[0].group(1)
        token_file = data_dir / "pki" / "admin" / "token"
        assert str(token_file) in "".join(lines)
        page = wait_for(lambda: urllib.request.urlopen(url, timeout=5).read(), "the page")
        assert b"/static/app.js" in page
    finally:
        ours.add_tree(up.pid)
        up.send_signal(signal.SIGTERM)
        try:
            up.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            up.kill()
            up.communicate()
        left = ours.alive() + processes_under(data_dir)
        kill_all(left)
        if not left:
            shutil.rmtree(data_dir, ignore_errors=True)
    assert not left, f"left behind: {left}"
