"""The fork server: a preloaded, single-threaded process that forks one worker per partition.

Started by WorkerManager as `python -m node_agent.runtime.forkserver --fd N --machine M`.
It imports unicorn and the runtime (and warms libunicorn once) so that a fork is all a
new partition costs. It dies with the agent (PR_SET_PDEATHSIG, and end-of-file on its
request socket); the workers it forks do not: each calls setsid() and has no death signal.

Protocol on the socketpair (the agent's end is owned by WorkerManager): u32 length +
pickle, both ways. Requests: {"op": "ping"} → {"ok": True}; {"op": "launch", "dir",
"spec", "stdin", "restore"?} → {"pid": int} or {"error": str} ("restore": a state file path
to start from instead of a cold boot).

As long as it lives, the fork server is the workers' parent: it reaps them and, before
reaping, records how each one ended in its partition directory (`exit.json`, written while
the child is still a zombie, so once a pid is gone the record is already there).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

__all__ = ["proc_starttime", "send_msg", "recv_msg", "describe_wait"]

_LEN = struct.Struct("<I")
PR_SET_PDEATHSIG = 1


def proc_starttime(pid: int) -> int | None:
    """Start time of a live (non-zombie) process in clock ticks, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def send_msg(sock: socket.socket, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LEN.pack(len(data)) + data)


def recv_msg(sock: socket.socket) -> Any:
    head = _recv(sock, _LEN.size)
    if head is None:
        raise EOFError("fork server socket closed")
    body = _recv(sock, _LEN.unpack(head)[0])
    if body is None:
        raise EOFError("fork server socket closed")
    return pickle.loads(body)


def _recv(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def describe_wait(record: dict[str, Any]) -> str:
    """'worker died: signal 11 (SIGSEGV)' from an exit.json record."""
    if record.get("signal"):
        sig = int(record["signal"])
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "unknown"
        return f"worker died: signal {sig} ({name})"
    return f"worker died: exit code {record.get('code')} without a status"


def _write_at(dirfd: int, name: str, data: bytes) -> None:
    tmp = f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640,
                 dir_fd=dirfd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)


def _preload(machine: str) -> Any:
    """Import everything a worker needs and touch libunicorn once, so forks start warm."""
    import unicorn

    from .worker_main import load_machine_class

    uc_mod: Any = unicorn  # the binding's typing is partial
    uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x90")
    uc.emu_start(0x1000, 0x1001)
    del uc
    return load_machine_class(machine)


class _Server:
    def __init__(self, sock: socket.socket, factory: Any) -> None:
        self.sock, self.factory = sock, factory
        self.children: dict[int, int] = {}  # pid -> fd of its partition directory
        self.sel: selectors.BaseSelector | None = None
        rfd, self.wakeup = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.rfd = rfd
        signal.set_wakeup_fd(self.wakeup)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def serve(self) -> None:
        sel = self.sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(self.rfd, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select(timeout=1.0):
                if key.fd == self.rfd:
                    while True:
                        try:
                            if not os.read(self.rfd, 512):
                                break
                        except BlockingIOError:
                            break
                else:
                    try:
                        request = recv_msg(self.sock)
                    except EOFError:
                        return  # the agent is gone: so are we (workers stay)
                    send_msg(self.sock, self.handle(request))
            self.reap()

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("op") == "ping":
            return {"ok": True, "pid": os.getpid()}
        if req.get("op") != "launch":
            return {"error": f"unknown op {req.get('op')!r}"}
        pdir = Path(req["dir"])
        try:
            pid = os.fork()
        except OSError as exc:
            return {"error": f"fork failed: {exc}"}
        if pid == 0:  # the worker
            try:
                signal.set_wakeup_fd(-1)
                if self.sel is not None:
                    self.sel.close()
                for dirfd in self.children.values():
                    os.close(dirfd)
                self.sock.close()
                os.close(self.rfd)
                os.close(self.wakeup)
                from .worker_main import worker_entry

                restore = req.get("restore")
                worker_entry(pdir, req["spec"], bool(req["stdin"]), self.factory,
                             restore=None if restore is None else Path(restore))
            finally:
                os._exit(1)
        # Held by fd: if the manager renames the directory away to relaunch the name,
        # this worker's exit record must not land in its successor's directory.
        self.children[pid] = os.open(pdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        start = proc_starttime(pid)
        tmp = pdir / ".pid.tmp"
        tmp.write_text(f"{pid} {start if start is not None else 0}\n")
        os.replace(tmp, pdir / "pid")
        return {"pid": pid}

    def reap(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            dirfd = self.children.pop(pid, None)
            if dirfd is not None:
                killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
                record = {"pid": pid, "signal": info.si_status if killed else None,
                          "code": None if killed else info.si_status}
                try:
                    _write_at(dirfd, "exit.json", json.dumps(record).encode())
                except OSError:
                    pass  # the directory was forgotten meanwhile
                os.close(dirfd)
            os.waitpid(pid, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--ppid", type=int, required=True)
    parser.add_argument("--machine", required=True)
    args = parser.parse_args(argv)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != args.ppid:  # the agent died before prctl took effect
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C to the agent's group is the agent's
    sock = socket.socket(fileno=args.fd)
    factory = _preload(args.machine)
    gc.collect()
    gc.freeze()  # keep preloaded objects out of collections: fewer copy-on-write faults
    _Server(sock, factory).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
