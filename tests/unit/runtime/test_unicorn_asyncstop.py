"""The asyncstop patch: uc_emu_stop() from another thread never replays an instruction."""

from __future__ import annotations

import threading
import time

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, UC_PROT_READ, UC_PROT_WRITE, Uc
from unicorn.x86_const import UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RIP

from node_agent.runtime.unicorn_build import build_info, is_patched

CODE, DATA = 0x10000, 0x20000
# loop: add qword [rbx], 1 ; add qword [rbx+8], rcx ; dec rcx ; jnz loop ; hlt
LOOP = bytes.fromhex("48830301" "48014b08" "48ffc9" "75f3" "f4")


@pytest.mark.skipif(not is_patched() or "asyncstop" not in str(build_info().get("patch")),
                    reason="needs the asyncstop patch (tools/build_unicorn.py)")
def test_async_stops_never_replay_a_read_modify_write() -> None:
    n = 3_000_000
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x1000, UC_PROT_ALL)
    uc.mem_map(DATA, 0x1000, UC_PROT_READ | UC_PROT_WRITE)
    uc.mem_write(CODE, LOOP)
    uc.reg_write(UC_X86_REG_RBX, DATA)
    uc.reg_write(UC_X86_REG_RCX, n)
    done = threading.Event()
    stops = 0

    def stopper() -> None:
        nonlocal stops
        while not done.is_set():
            time.sleep(0.0002)
            uc.emu_stop()
            stops += 1

    threading.Thread(target=stopper, daemon=True).start()
    pc = CODE
    runs = 0
    while True:
        uc.emu_start(pc, CODE + len(LOOP) - 1)
        runs += 1
        pc = uc.reg_read(UC_X86_REG_RIP)
        if pc == CODE + len(LOOP) - 1:
            break
    done.set()
    count = int.from_bytes(uc.mem_read(DATA, 8), "little")
    total = int.from_bytes(uc.mem_read(DATA + 8, 8), "little")
    assert runs > 10, "the stopper never interrupted the loop"
    assert (count, total) == (n, n * (n + 1) // 2)
