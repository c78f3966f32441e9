"""A small cluster for testing the netns runner's own primitives without Viridian: three
services (a, b, c), each a Python TCP echo server on port 7000 that, on SIGTERM, writes a
`terminated` file in its working dir. `reach()` tells from inside a service (or from the
host) whether a port answers, is refused (RST) or stays silent (dropped), and the RTTs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from netns import NetnsCluster

PORT = 7000
CLOSED_PORT = 7001  # nothing listens there: an answer is an RST

SERVER = '''
import os, signal, socketserver, sys
def on_term(*_):
    open("terminated", "w").write("SIGTERM\\n")
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(100):
            self.request.sendall(data)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", int(sys.argv[1])), Echo).serve_forever()
'''

PROBE = '''
import json, socket, sys, time
host, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
t = time.monotonic()
try:
    s = socket.create_connection((host, port), timeout=timeout)
except ConnectionRefusedError:
    print(json.dumps({"result": "refused", "after_s": time.monotonic() - t})); sys.exit()
except (TimeoutError, socket.timeout):
    print(json.dumps({"result": "silent", "after_s": time.monotonic() - t})); sys.exit()
except OSError as e:
    print(json.dumps({"result": "error " + str(e), "after_s": time.monotonic() - t}))
    sys.exit()
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtts = []
for _ in range(count):
    t = time.monotonic()
    s.sendall(b"x")
    s.recv(1)
    rtts.append((time.monotonic() - t) * 1000)
print(json.dumps({"result": "ok", "rtt_ms": rtts}))
'''


@dataclass(frozen=True)
class Reach:
    result: str  # "ok", "refused" (an RST came back), "silent" (no answer), "error ..."
    rtt_ms: list[float]
    after_s: float


def write_compose(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "echo.py").write_text(SERVER)
    (out / "probe.py").write_text(PROBE)
    services = "\n".join(
        f"  {n}:\n    entrypoint: [\"python\", \"{out / 'echo.py'}\", \"{PORT}\"]\n"
        f"    hostname: {n}\n    restart: \"no\"" for n in ("a", "b", "c"))
    path = out / "probe-compose.yml"
    path.write_text(f"name: probe\nservices:\n{services}\n")
    return path


def wait_listening(c: NetnsCluster, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for svc in c.selected:
        while True:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((c.address(svc), PORT)) == 0:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"{svc} does not listen on {PORT}")
            time.sleep(0.05)


def reach(c: NetnsCluster, src: str | None, dst: str, port: int = PORT, count: int = 3,
          timeout: float = 1.5) -> Reach:
    """From service src (None: the host) to dst:port."""
    probe = str(Path(c.compose_path).parent / "probe.py")
    argv = [probe, c.address(dst), str(port), str(count), str(timeout)]
    if src is None:
        res = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                             timeout=timeout + 10)
    else:
        res = c.exec(src, ["python", *argv], timeout=timeout + 10)
    if res.returncode != 0:
        raise AssertionError(f"probe failed: {res.stderr}")
    data = json.loads(res.stdout)
    return Reach(data["result"], data.get("rtt_ms", []), data.get("after_s", 0.0))
