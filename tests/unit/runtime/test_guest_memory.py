"""GuestMemory's brk/mmap allocator keeps allocations disjoint, zeroed and inside the budget."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.runtime.memory import PAGE, GuestMemory

BASE, IMAGE_END, MEMORY = 0x400000, 0x410000, 4 << 20

ops = st.lists(st.one_of(
    st.tuples(st.just("mmap"), st.integers(1, 600_000)),
    st.tuples(st.just("munmap"), st.integers(0, 30)),
    st.tuples(st.just("brk"), st.integers(0, 2 << 20)),
), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_allocations_stay_disjoint_and_in_bounds(sequence: list[tuple[str, int]]) -> None:
    mem = GuestMemory(BASE, IMAGE_END, MEMORY, 64)
    live: list[tuple[int, int]] = []
    try:
        for op, arg in sequence:
            if op == "mmap":
                addr = mem.mmap_anon(arg)
                if addr is None:
                    continue
                length = (arg + PAGE - 1) // PAGE * PAGE
                assert mem.read(addr, 16) == bytes(16)          # fresh pages are zero
                mem.write(addr, b"\xff" * 16)
                assert mem.brk <= addr and addr + length <= mem.stack_low
                live.append((addr, addr + length))
            elif op == "munmap" and live:
                lo, hi = live.pop(arg % len(live))
                mem.munmap(lo, hi - lo)
            else:
                mem.set_brk(IMAGE_END + arg)
            spans = sorted(live)
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
            assert all(mem.brk <= lo for lo, _ in spans)
    finally:
        mem.close()


def test_out_of_memory_is_none_not_an_exception() -> None:
    mem = GuestMemory(BASE, IMAGE_END, MEMORY, 64)
    try:
        assert mem.mmap_anon(MEMORY * 2) is None
        assert mem.set_brk(IMAGE_END + MEMORY * 2) == IMAGE_END     # unchanged
    finally:
        mem.close()


def test_i386_space_is_capped_below_4gib() -> None:
    mem = GuestMemory(0x8048000, 0x8100000, 64 << 30, 32)
    try:
        assert mem.top <= 1 << 32
    finally:
        mem.close()


def test_munmap_zeroes_before_the_range_can_be_mapped_again() -> None:
    """A munmapped range is zeroed while the allocator lock is held: zeroing after it let a
    concurrent mmap (a new thread's stack, a malloc arena) receive the range, write to it and
    lose those writes (clone children popping fn/arg = 0, "free(): invalid pointer")."""
    mem = GuestMemory(BASE, IMAGE_END, MEMORY, 64)
    addr = mem.mmap_anon(4 * PAGE)
    assert addr is not None
    mem.write(addr, b"\x01" * (4 * PAGE))
    held: list[bool] = []
    zero = mem.zero

    def checking_zero(a: int, n: int) -> None:
        held.append(mem.lock.locked())
        zero(a, n)

    mem.zero = checking_zero  # type: ignore[method-assign]
    mem.munmap(addr, 4 * PAGE)
    assert held == [True]
    again = mem.mmap_anon(4 * PAGE)
    assert again == addr and mem.read(addr, 4 * PAGE) == bytes(4 * PAGE)
    mem.close()
