"""What this host can offer: refuse to run where partitions could not (not 64-bit, no x86
emulation), and measure the default capacity."""

from __future__ import annotations

import os
import platform
import sys

HOST_64 = {"x86_64", "amd64", "aarch64", "arm64", "ppc64le", "s390x", "riscv64"}


class HostUnsupported(Exception):
    pass


def emulated_arches() -> list[str]:
    """Guest architectures the installed Unicorn can emulate (x86 covers x86_64 and i386)."""
    import unicorn

    return ["x86_64", "i386"] if unicorn.uc_arch_supported(unicorn.UC_ARCH_X86) else []


def check_host() -> list[str]:
    """Return the architectures this node offers; raise HostUnsupported with why if none."""
    machine = platform.machine().lower()
    if sys.maxsize <= 2**32 or machine not in HOST_64:
        raise HostUnsupported(
            f"this host is not 64-bit ({machine}, {sys.maxsize.bit_length() + 1}-bit Python): "
            "a Viridian node needs a 64-bit host to back partitions of up to 64 GiB"
        )
    arches = emulated_arches()
    if not arches:
        raise HostUnsupported("the installed Unicorn was built without x86 support")
    return arches


def host_vcpus() -> int:
    return len(os.sched_getaffinity(0)) or 1


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
