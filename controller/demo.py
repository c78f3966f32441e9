"""`make demo`: start the embedded cluster, build and push guest programs, run partitions
across both nodes (a 4-vCPU multi-threaded one, a 32-bit one, a busybox shell running a
pipeline), show the cluster, tear down.

Every step is a real `viridian` command, printed before it runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from controller.etcd_server import free_port

REPO = Path(__file__).resolve().parents[1]
GUESTS = REPO / "tests" / "guests"
BUILDS = {
    "hello": ("hello.c", ["-static", "-O2"]),
    "hello32": ("hello.c", ["-m32", "-static", "-O2"]),
    "threads": ("threads.c", ["-static", "-O2", "-pthread"]),
    "ticker": ("demo_ticker.c", ["-static", "-O2"]),
}


class Demo:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.address = f"127.0.0.1:{free_port()}"
        self.up: subprocess.Popen[bytes] | None = None

    def viridian(self, *args: str, check: bool = True, show: bool = True) -> int:
        if show:
            print(f"\n$ viridian {shlex.join(args)}", flush=True)
        code = subprocess.call(
            [sys.executable, "-m", "controller.cli", "--controller", self.address, *args]
        )
        if check and code != 0:
            raise SystemExit(f"demo: `viridian {shlex.join(args)}` exited with {code}")
        return code

    def quiet(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "controller.cli", "--controller", self.address, *args],
            capture_output=True, text=True,
        ).stdout

    def build(self) -> dict[str, Path]:
        out = {}
        for name, (source, flags) in BUILDS.items():
            target = self.work / "bin" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            result = subprocess.run(["gcc", *flags, "-o", str(target), str(GUESTS / source)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                if name == "hello32":
                    print("demo: no 32-bit toolchain (apt-get install gcc-multilib); "
                          "skipping the 32-bit guest", flush=True)
                    continue
                raise SystemExit(f"demo: cannot build {name}: {result.stderr.strip()}")
            out[name] = target
        return out

    def start_cluster(self) -> None:
        print(f"$ viridian up --nodes 2 --data-dir {self.work / 'data'} --listen {self.address}",
              flush=True)
        self.up = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "up", "--nodes", "2",
             "--data-dir", str(self.work / "data"), "--listen", self.address],
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.up.poll() is not None:
                raise SystemExit(f"demo: viridian up exited with {self.up.returncode}")
            if self.quiet("nodes").count("Ready") - self.quiet("nodes").count("NotReady") >= 2:
                return
            time.sleep(0.3)
        raise SystemExit("demo: the cluster did not become ready within 60s")

    def stop_cluster(self) -> None:
        if self.up is None or self.up.poll() is not None:
            return
        print("\n$ kill -TERM <viridian up>   # stops etcd, the controller, agents, partitions",
              flush=True)
        self.up.send_signal(signal.SIGTERM)
        try:
            self.up.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.up.pid, signal.SIGKILL)
            self.up.wait()

    def shell_demo(self) -> None:
        """A partition as a small Linux machine: busybox's shell runs a pipeline (fork,
        execve, pipes, wait) and lists its own processes through /proc."""
        busybox = Path("/bin/busybox")
        if not busybox.exists():
            print("demo: no busybox (apt-get install busybox-static); skipping the shell "
                  "guest", flush=True)
            return
        root = self.work / "shell-root"
        (root / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy(busybox, root / "bin" / "busybox")
        for applet in ("sh", "seq", "sort", "head", "ps", "wc", "echo"):
            link = root / "bin" / applet
            if not link.is_symlink():
                link.symlink_to("busybox")
        self.viridian("image", "push", "shell", str(root), "--entrypoint", "/bin/sh")
        self.viridian("run", "--rm", "--image", "shell", "--env", "PATH=/bin", "--",
                      "-c", "seq 1 1000 | sort -rn | head -3; "
                      "echo \"$(seq 1 5 | wc -l) lines through a pipe\"; ps -o pid,comm")

    def run(self) -> None:
        started = time.monotonic()
        binaries = self.build()
        self.start_cluster()
        for name, path in binaries.items():
            self.viridian("image", "push", name, str(path))
        self.viridian("image", "ls")
        for i in range(1, 5):
            self.viridian("create", f"ticker-{i}", "--image", "ticker", "--strategy", "spread",
                          "--memory", "32Mi", "--", "120", "250", show=i == 1)
        print("   (and ticker-2 .. ticker-4 the same way)", flush=True)
        self.viridian("run", "--rm", "--image", "threads", "--vcpus", "4", "--memory", "64Mi")
        if "hello32" in binaries:
            code = self.viridian("run", "--rm", "--image", "hello32", "--env",
                                 "GREETING=hello-from-i386", "--", "3", "thirty-two-bit",
                                 check=False)
            print(f"   (the guest's exit code came back: {code})", flush=True)
        self.shell_demo()
        self.viridian("create", "too-big", "--image", "hello", "--memory", "60Gi")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.quiet("ls").count("Running") < 4:
            time.sleep(0.2)
        self.viridian("ls")
        self.viridian("nodes", "-o", "wide")
        self.viridian("logs", "ticker-1")
        self.viridian("explain", "too-big")
        self.viridian("events", "--limit", "8")
        print(f"\ndemo finished in {time.monotonic() - started:.1f}s; tearing down", flush=True)


def main() -> int:
    if shutil.which("gcc") is None:
        print("demo: gcc is needed to build the guest programs", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="viridian-demo-"))
    demo = Demo(work)
    try:
        demo.run()
        return 0
    except SystemExit as err:
        print(err, file=sys.stderr)
        return 1
    finally:
        demo.stop_cluster()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
