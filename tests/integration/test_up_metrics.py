"""`viridian up` prints every server's metrics URL at start, and each answers a scrape."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from itutil import REPO, ProcessRecord, kill_all, processes_under, short_tmp_dir, wait_for
from prometheus_client.parser import text_string_to_metric_families

from controller.etcd_server import free_port

URL = re.compile(r"^metrics\s+(\S+)\s+(http://\S+/metrics)$")


def _families(url: str) -> dict[str, float] | None:
    """Sample values by name (None while the server is not answering yet)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_up_prints_and_serves_metrics_urls() -> None:
    data_dir = short_tmp_dir("vit-upm-")
    address = f"127.0.0.1:{free_port()}"
    ours = ProcessRecord()
    up = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "up", "--nodes", "1", "--insecure",
         "--data-dir", str(data_dir), "--listen", address, "--log-format", "json"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=REPO, start_new_session=True)
    try:
        assert up.stdout is not None
        urls: dict[str, str] = {}
        deadline = time.monotonic() + 40
        for line in up.stdout:   # ends at "Try: ..." (printed once everything started)
            if m := URL.match(line.strip()):
                urls[m.group(1)] = m.group(2)
            if line.startswith("Try:") or time.monotonic() > deadline:
                break
        assert set(urls) == {"etcd", "controller", "node-1"}, urls
        assert all(u.startswith("http://127.0.0.1:") for u in urls.values())
        ctl = wait_for(lambda: (f := _families(urls["controller"])) and
                       f.get("viridian_sessions_open") == 1 and f, "the agent's session")
        assert "viridian_etcd_txn_seconds_count" in ctl
        agent = wait_for(lambda: _families(urls["node-1"]), "the agent's metrics")
        assert agent["viridian_partitions_running"] == 0
        assert wait_for(lambda: _families(urls["etcd"]), "etcd's metrics")
        ours.add_tree(up.pid)
        up.send_signal(signal.SIGTERM)
        up.communicate(timeout=20)
        assert up.returncode == 0
        assert not ours.alive() and not processes_under(data_dir)
    finally:
        if up.poll() is None:
            ours.add_tree(up.pid)
            up.kill()
            up.wait()
        left = ours.alive() + processes_under(data_dir)
        kill_all(left)
        if not left:
            shutil.rmtree(data_dir, ignore_errors=True)
