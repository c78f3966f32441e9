"""Semantics the notdirty patch (tools/patches/) must keep; they hold for stock unicorn too."""

from __future__ import annotations

import ctypes
import mmap

import pytest
from unicorn import (
    UC_ARCH_X86,
    UC_ERR_WRITE_PROT,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn.x86_const import UC_X86_REG_RAX, UC_X86_REG_RBX

from node_agent.runtime.unicorn_build import build_info, is_patched

CODE = 0x10000
DATA = 0x20000
RW = UC_PROT_READ | UC_PROT_WRITE


def _uc() -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x1000, UC_PROT_ALL)
    return uc


def test_build_info_reports_the_loaded_library() -> None:
    info = build_info()
    assert info["library"]
    assert is_patched() is info["patched"]


def test_self_modifying_code_on_exec_page_is_seen() -> None:
    uc = _uc()
    # mov byte [rip+1], 0x07 ; then "mov eax, imm32" whose first imm byte we just wrote.
    code = bytes.fromhex("c6050100000007") + bytes.fromhex("b8ffffffff")
    uc.mem_write(CODE, code)
    uc.emu_start(CODE, CODE + len(code))
    assert uc.reg_read(UC_X86_REG_RAX) == 0xFFFFFF07


def test_stores_to_data_page_land_and_loop_runs() -> None:
    uc = _uc()
    uc.mem_map(DATA, 0x1000, RW)
    # mov rbx, DATA ; mov ecx, 100 ; l: add dword [rbx], ecx ; loop l
    code = bytes.fromhex("48c7c300000200" "b964000000" "010b" "e2fc")
    uc.mem_write(CODE, code)
    uc.emu_start(CODE, CODE + len(code))
    assert int.from_bytes(uc.mem_read(DATA, 4), "little") == 5050


def test_write_to_readonly_ptr_region_faults() -> None:
    buf = mmap.mmap(-1, 0x1000)
    ptr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    uc = _uc()
    uc.mem_map_ptr(DATA, 0x1000, UC_PROT_READ, ptr)
    code = bytes.fromhex("48c7c300000200" "c7032a000000")  # mov rbx, DATA ; mov [rbx], 42
    uc.mem_write(CODE, code)
    with pytest.raises(UcError) as err:
        uc.emu_start(CODE, CODE + len(code))
    assert err.value.errno == UC_ERR_WRITE_PROT
    assert buf[0] == 0


@pytest.mark.parametrize("first_run_writes", [True, False], ids=["tlb-warm", "tlb-cold"])
def test_protect_takes_effect_on_cached_tlb_entries(first_run_writes: bool) -> None:
    uc = _uc()
    uc.mem_map(DATA, 0x1000, RW)
    store = bytes.fromhex("48c7c300000200" "c7032a000000")
    uc.mem_write(CODE, store)
    if first_run_writes:
        uc.emu_start(CODE, CODE + len(store))
    uc.mem_protect(DATA, 0x1000, UC_PROT_READ)
    with pytest.raises(UcError) as err:
        uc.emu_start(CODE, CODE + len(store))
    assert err.value.errno == UC_ERR_WRITE_PROT


def test_code_written_before_exec_is_granted_runs_fresh() -> None:
    uc = _uc()
    uc.mem_map(DATA, 0x1000, RW)
    uc.mem_write(DATA, bytes.fromhex("b801000000"))  # mov eax, 1
    uc.mem_protect(DATA, 0x1000, UC_PROT_ALL)
    uc.emu_start(DATA, DATA + 5)
    assert uc.reg_read(UC_X86_REG_RAX) == 1
    # Patch the immediate from guest code through the (now executable) data page.
    code = bytes.fromhex("48c7c301000200" "c60302")  # mov rbx, DATA+1 ; mov byte [rbx], 2
    uc.mem_write(CODE, code)
    uc.emu_start(CODE, CODE + len(code))
    assert uc.reg_read(UC_X86_REG_RBX) == DATA + 1
    uc.emu_start(DATA, DATA + 5)
    assert uc.reg_read(UC_X86_REG_RAX) == 2
