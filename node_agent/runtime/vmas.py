"""What /proc/<pid>/maps and /proc/<pid>/stat say about an address space.

GuestMemory (memory.py) knows which guest ranges are allocated; it does not know what the
guest asked for: the permissions it gave a range, which file (guest path, offset, device and
inode as stat shows them) a range came from, or where the program's code, data, arguments
and environment are (the memory-layout fields of /proc/<pid>/stat). That is kept here, per
address space, as the loader and the mmap family set it: a sorted list of regions, capped as
Linux caps mappings (past the cap new regions are not remembered: maps then shows the range
as anonymous, nothing else changes).

Only for display: the runtime never decides anything from these regions.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loader import ElfImage
    from .memory import GuestMemory

__all__ = ["Region", "Vmas", "vmas_of", "inherit", "record_elf", "record_layout", "MAX_REGIONS",
           "PROT_R", "PROT_W", "PROT_X"]

PROT_R, PROT_W, PROT_X = 1, 2, 4
#: Linux's vm.max_map_count.
MAX_REGIONS = 65530


@dataclass(frozen=True)
class Region:
    """One mapping as the guest made it (prot: PROT_R|PROT_W|PROT_X bits)."""

    lo: int
    hi: int
    prot: int
    shared: bool = False
    path: str = ""
    offset: int = 0
    dev: int = 0
    ino: int = 0

    def clipped(self, lo: int, hi: int) -> Region:
        """The part of this region inside [lo, hi) (its file offset moved along)."""
        lo, hi = max(lo, self.lo), min(hi, self.hi)
        offset = self.offset + (lo - self.lo) if self.path else 0
        return replace(self, lo=lo, hi=hi, offset=offset)

    def perms(self) -> str:
        return ("r" if self.prot & PROT_R else "-") + ("w" if self.prot & PROT_W else "-") + \
            ("x" if self.prot & PROT_X else "-") + ("s" if self.shared else "p")


@dataclass
class Vmas:
    """The regions of one address space and its layout (the mm fields of /proc stat)."""

    regions: list[Region] = field(default_factory=list)
    #: start_code, end_code, start_data, end_data, start_stack, arg_start, arg_end,
    #: env_start, env_end: set once, by the program loader
    layout: dict[str, int] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._los = [r.lo for r in self.regions]      # parallel to regions, for bisect
        self._his = [r.hi for r in self.regions]

    def copy(self) -> Vmas:
        with self.lock:
            return Vmas(list(self.regions), dict(self.layout))

    def _splice(self, i: int, j: int, new: list[Region]) -> None:
        new.sort(key=lambda r: r.lo)
        self.regions[i:j] = new
        self._los[i:j] = [r.lo for r in new]
        self._his[i:j] = [r.hi for r in new]

    def _cut(self, lo: int, hi: int) -> tuple[int, int, list[Region]]:
        """Indices [i, j) of the regions meeting [lo, hi) and what of them lies outside."""
        i = bisect.bisect_right(self._his, lo)
        j = bisect.bisect_left(self._los, hi)
        keep: list[Region] = []
        for r in self.regions[i:j]:
            if r.lo < lo:
                keep.append(r.clipped(r.lo, lo))
            if r.hi > hi:
                keep.append(r.clipped(hi, r.hi))
        return i, j, keep

    def map(self, region: Region) -> None:
        """``region`` replaces whatever was mapped over its range (mmap, MAP_FIXED)."""
        if region.hi <= region.lo:
            return
        with self.lock:
            i, j, keep = self._cut(region.lo, region.hi)
            full = len(self.regions) - (j - i) + len(keep) + 1 > MAX_REGIONS
            self._splice(i, j, keep if full else [*keep, region])

    def unmap(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        with self.lock:
            i, j, keep = self._cut(lo, hi)
            self._splice(i, j, keep)

    def protect(self, lo: int, hi: int, prot: int) -> None:
        """mprotect: the regions inside [lo, hi) get ``prot`` (split at the edges)."""
        if hi <= lo:
            return
        with self.lock:
            i, j, keep = self._cut(lo, hi)
            inside = [replace(r.clipped(lo, hi), prot=prot) for r in self.regions[i:j]]
            if len(self.regions) - (j - i) + len(keep) + len(inside) <= MAX_REGIONS:
                self._splice(i, j, [*keep, *inside])

    def move(self, old: int, old_size: int, new: int, new_size: int) -> None:
        """mremap: what was at [old, old+old_size) is now at ``new``, cut to ``new_size``
        or, grown, with its last region continued."""
        with self.lock:
            moved = self.within(old, old + old_size)
            self.unmap(old, old + old_size)
            for k, r in enumerate(moved):
                lo, hi = r.lo - old + new, r.hi - old + new
                if k == len(moved) - 1 and r.hi == old + old_size:
                    hi = new + new_size
                hi = min(hi, new + new_size)
                if lo < hi:
                    self.map(replace(r, lo=lo, hi=hi))

    def within(self, lo: int, hi: int) -> list[Region]:
        """The regions inside [lo, hi), clipped to it, in address order."""
        with self.lock:
            i = bisect.bisect_right(self._his, lo)
            j = bisect.bisect_left(self._los, hi)
            return [r.clipped(lo, hi) for r in self.regions[i:j]]


_SPACES: weakref.WeakKeyDictionary[GuestMemory, Vmas] = weakref.WeakKeyDictionary()


def vmas_of(mem: GuestMemory) -> Vmas:
    """The regions of ``mem`` (empty until the loader or mmap records some)."""
    found = _SPACES.get(mem)
    if found is None:
        found = _SPACES[mem] = Vmas()
    return found


def inherit(parent: GuestMemory, child: GuestMemory) -> None:
    """fork: the child's address space starts with the parent's regions."""
    _SPACES[child] = vmas_of(parent).copy()


def record_elf(mem: GuestMemory, image: ElfImage, path: str, dev: int, ino: int) -> None:
    """The PT_LOAD segments of ``image`` (placed in ``mem``) as Linux's ELF loader maps
    them: the file's pages with their offset, then the bss pages past them, anonymous."""
    vm = vmas_of(mem)
    for vaddr, memsz, offset, filesz, flags in image.segments:
        addr = vaddr + image.bias
        prot = (PROT_R if flags & _PF_R else 0) | (PROT_W if flags & _PF_W else 0) | \
            (PROT_X if flags & _PF_X else 0)
        lo, mid, hi = _down(addr), _up(addr + filesz) if filesz else _down(addr), \
            _up(addr + memsz)
        if mid > lo:
            vm.map(Region(lo, mid, prot, path=path, offset=_down(offset), dev=dev, ino=ino))
        if hi > mid:
            vm.map(Region(mid, hi, prot))


def record_layout(mem: GuestMemory, image: ElfImage, sp: int) -> None:
    """start_code ... env_end of the program, as binfmt_elf computes them, and where its
    arguments and environment strings are (read back from the stack just built at ``sp``:
    argc, argv pointers, NULL, envp pointers, NULL)."""
    code = [(v + image.bias, v + image.bias + fs) for v, _m, _o, fs, fl in image.segments
            if fl & _PF_X]
    layout = {"start_code": min((lo for lo, _ in code), default=0),
              "end_code": max((hi for _, hi in code), default=0),
              "start_data": max(v + image.bias for v, *_ in image.segments),
              "end_data": max(v + image.bias + fs for v, _m, _o, fs, _f in image.segments),
              "start_stack": sp}
    word = 8 if image.arch == "x86_64" else 4

    def strings(at: int, count: int) -> tuple[int, int, int]:
        ptrs = [int.from_bytes(mem.read(at + i * word, word), "little") for i in range(count)]
        if not ptrs:
            return 0, 0, at + word
        last = max(ptrs)                   # the strings are contiguous
        end = last + len(mem.read_cstr(last, 1 << 20)) + 1
        return min(ptrs), end, at + (count + 1) * word

    argc = int.from_bytes(mem.read(sp, word), "little")
    layout["arg_start"], layout["arg_end"], envp = strings(sp + word, argc)
    count = 0
    while int.from_bytes(mem.read(envp + count * word, word), "little"):
        count += 1
    layout["env_start"], layout["env_end"], _ = strings(envp, count)
    vmas_of(mem).layout = layout


_PF_X, _PF_W, _PF_R = 1, 2, 4
_PAGE = 0x1000


def _down(n: int) -> int:
    return n & ~(_PAGE - 1)


def _up(n: int) -> int:
    return (n + _PAGE - 1) & ~(_PAGE - 1)


def dump(mem: GuestMemory) -> dict[str, object]:
    """The regions and layout of ``mem`` as JSON-able data (saved states)."""
    vmas = vmas_of(mem)
    with vmas.lock:
        return {"regions": [[r.lo, r.hi, r.prot, int(r.shared), r.path, r.offset, r.dev, r.ino]
                            for r in vmas.regions],
                "layout": dict(vmas.layout)}


def load(mem: GuestMemory, data: object) -> None:
    """Apply dump's data to ``mem`` (a saved state is hostile: wrong shapes are ignored,
    at most MAX_REGIONS regions; they only ever feed /proc)."""
    if not isinstance(data, dict):
        return
    regions: list[Region] = []
    for rec in data.get("regions", [])[:MAX_REGIONS]:
        try:
            lo, hi, prot, shared, path, offset, dev, ino = rec
            regions.append(Region(int(lo), int(hi), int(prot) & 7, bool(shared), str(path),
                                  int(offset), int(dev), int(ino)))
        except (TypeError, ValueError):
            continue
    regions.sort(key=lambda r: r.lo)
    layout = {str(k): int(v) for k, v in dict(data.get("layout", {})).items()
              if isinstance(v, int)}
    _SPACES[mem] = Vmas(regions, layout)
