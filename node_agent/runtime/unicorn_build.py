"""Which libunicorn is this process running: our patched build or the stock wheel?

tools/build_unicorn.py puts a JSON marker `unicorn/_viridian_patched` into the wheel it
builds, holding the sha256 of the libunicorn it packed. `is_patched()` is true only when
the library actually loaded by the unicorn binding has that hash, so a stale marker or a
LIBUNICORN_PATH override pointing elsewhere reads as "not patched".
See docs/unicorn-patch.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["is_patched", "build_info", "loaded_library"]

_MARKER = "_viridian_patched"


def loaded_library() -> Path | None:
    """Path of the libunicorn the binding has loaded (imports unicorn)."""
    import unicorn.unicorn_py3.unicorn as binding

    name = getattr(getattr(binding, "uclib", None), "_name", None)
    return Path(name).resolve() if isinstance(name, str) else None


@functools.cache
def build_info() -> dict[str, Any]:
    """The build marker plus `patched` (bool) and `library` (loaded path); cached."""
    import unicorn

    version = getattr(unicorn, "__version__", None)
    info: dict[str, Any] = {"unicorn": version, "patched": False}
    lib = loaded_library()
    info["library"] = str(lib) if lib else None
    try:
        marker = json.loads((Path(unicorn.__file__).parent / _MARKER).read_text())
    except (OSError, ValueError):
        return info
    if not isinstance(marker, dict):
        return info
    info.update(marker)
    if lib is not None and lib.is_file():
        digest = hashlib.sha256(lib.read_bytes()).hexdigest()
        info["patched"] = digest == marker.get("lib_sha256")
    return info


def is_patched() -> bool:
    """True when the loaded libunicorn is the one tools/build_unicorn.py built and marked."""
    return bool(build_info()["patched"])
