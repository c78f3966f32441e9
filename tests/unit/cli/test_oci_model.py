"""Layer merging against a model: random layer stacks over a small set of paths, imported,
compared with a dictionary that applies the OCI rules (whiteouts hide lower content, an
entry replaces what is below it, a directory over a directory merges, a parent that is a
file or symlink below is refused)."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from controller.cli.oci import OciError, import_image
from tests.oci_build import Dir, Entry, File, Image, Opaque, Symlink, Whiteout, write_oci_layout

PATHS = ["a", "b", "a/x", "a/y", "b/z", "a/x/q"]
Node = tuple[str, str]                       # ("file", data) | ("dir", "") | ("sym", target)

entry_kind = st.sampled_from(["file", "dir", "dir", "dir", "sym"])
layer = st.tuples(
    st.dictionaries(st.sampled_from(PATHS), st.tuples(entry_kind, st.sampled_from("uvw")),
                    max_size=5),
    st.lists(st.tuples(st.sampled_from(["wh", "opq"]), st.sampled_from(PATHS)), max_size=2,
             unique=True),
)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def _parents_are_dirs(state: dict[str, Node], path: str) -> bool:
    parts = path.split("/")
    return all(state.get("/".join(parts[:i]), ("dir", ""))[0] == "dir"
               for i in range(1, len(parts)))


def model(layers: list[tuple[dict[str, tuple[str, str]], list[tuple[str, str]]]]
          ) -> dict[str, Node] | None:
    """The root the layers make, or None where the import must refuse them."""
    state: dict[str, Node] = {}
    for entries, whiteouts in layers:
        for kind, path in whiteouts:
            if not _parents_are_dirs(state, path) or path not in state:
                continue
            if kind == "wh":
                state = {p: n for p, n in state.items() if not _under(p, path)}
            elif state[path][0] == "dir":
                state = {p: n for p, n in state.items() if p == path or not _under(p, path)}
        for path in sorted(entries):
            kind, data = entries[path]
            parts = path.split("/")
            for i in range(1, len(parts)):
                above = "/".join(parts[:i])
                if above in entries and entries[above][0] != "dir":
                    return None              # the layer's own parent is not a directory
                if state.setdefault(above, ("dir", ""))[0] != "dir":
                    return None              # a lower file or symlink as parent
            if kind == "dir" and state.get(path, ("", ""))[0] == "dir":
                continue
            state = {p: n for p, n in state.items() if not _under(p, path)}
            state[path] = {"file": ("file", data), "dir": ("dir", ""),
                           "sym": ("sym", "target-" + data)}[kind]
    return state


def _entries(entries: dict[str, tuple[str, str]], whiteouts: list[tuple[str, str]]
             ) -> list[Entry]:
    out: list[Entry] = [Whiteout(p) if k == "wh" else Opaque(p) for k, p in whiteouts]
    for path in sorted(entries):
        kind, data = entries[path]
        out.append(File(path, data.encode()) if kind == "file" else Dir(path)
                   if kind == "dir" else Symlink(path, "target-" + data))
    return out


def _read(tar_path: Path) -> dict[str, Node]:
    got: dict[str, Node] = {}
    with tarfile.open(tar_path) as tar:
        for info in tar:
            if info.isreg():
                f = tar.extractfile(info)
                assert f is not None
                got[info.name] = ("file", f.read().decode())
            elif info.isdir():
                got[info.name] = ("dir", "")
            else:
                got[info.name] = ("sym", info.linkname)
    return got


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(layer, min_size=1, max_size=4))
def test_layers_merge_as_the_model_says(
        layers: list[tuple[dict[str, tuple[str, str]], list[tuple[str, str]]]]) -> None:
    expected = model(layers)
    with tempfile.TemporaryDirectory() as tmp:
        program: list[Entry] = [Dir("bin"), File("bin/app", b"app")]  # outside PATHS
        src = write_oci_layout(Path(tmp) / "l", Image(
            [program] + [_entries(e, w) for e, w in layers], entrypoint=["/bin/app"]))
        out = Path(tmp) / "o.tar"
        try:
            import_image(src, out, arch=None, ref=None)
        except OciError as err:
            assert expected is None, f"refused: {err}; model: {expected}"
            event("refused")
            return
        event(f"accepted, {len(expected or ())} paths")
        assert expected is not None, "accepted what the model refuses"
        assert _read(out) == {**expected, "bin": ("dir", ""), "bin/app": ("file", "app")}
