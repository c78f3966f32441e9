"""The docs stand alone: docs/api.md matches the protos, README lists every page, and nothing
points outside the repository."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]
PROTO_DIR = ROOT / "proto" / "viridian" / "v1"


def _load_generator() -> ModuleType:
    path = ROOT / "tools" / "gen_api_docs.py"
    spec = importlib.util.spec_from_file_location("gen_api_docs", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


gen = _load_generator()


def _rpcs_by_service(text: str) -> dict[str, list[str]]:
    """Every `rpc Name(` per `service` block, read from .proto text without protoc."""
    found: dict[str, list[str]] = {}
    for svc in re.finditer(r"^service\s+(\w+)\s*\{(.*?)^\}", text, re.M | re.S):
        found[svc.group(1)] = re.findall(r"^\s*rpc\s+(\w+)\s*\(", svc.group(2), re.M)
    return found


def test_api_docs_check_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(["--check"]) == 0, capsys.readouterr().err


def test_every_rpc_of_every_service_is_in_api_md() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    total = 0
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        for service, rpcs in _rpcs_by_service(proto.read_text()).items():
            section = api.split(f"### Service `{service}`", 1)
            assert len(section) == 2, f"service {service} ({proto.name}) missing from docs/api.md"
            body = section[1].split("\n### ", 1)[0]
            for rpc in rpcs:
                assert f"| `{rpc}` |" in body, f"{service}.{rpc} missing from docs/api.md"
            total += len(rpcs)
    assert total >= 40  # the three services as of this writing; more only add


def _copy_protos(tmp_path: Path) -> Path:
    root = tmp_path / "proto"
    shutil.copytree(PROTO_DIR, root / "viridian" / "v1",
                    ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    return root


def test_a_new_rpc_makes_the_committed_docs_stale(tmp_path: Path) -> None:
    root = _copy_protos(tmp_path)
    proto = root / "viridian" / "v1" / "controller.proto"
    text = proto.read_text()
    end = text.index("\n}\n", text.index("service Controller"))
    proto.write_text(text[:end] + "\n  // How a partition fares. NOT_FOUND if unknown.\n"
                     "  rpc FareWell(PartitionRef) returns (stream Partition);" + text[end:])
    fresh = gen.render(root)
    assert fresh != (ROOT / "docs" / "api.md").read_text()
    assert ("| `FareWell` | [`PartitionRef`](#viridian-v1-partitionref) | stream "
            "[`Partition`](#viridian-v1-partition) | How a partition fares. NOT_FOUND if unknown. |"
            in fresh)


def test_every_link_in_api_md_has_its_target() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    ids = set(re.findall(r'<a id="([^"]+)"></a>', api))
    missing = sorted({t for t in re.findall(r"\]\(#([^)]+)\)", api)} - ids)
    assert ids and not missing, missing


def test_render_is_deterministic(tmp_path: Path) -> None:
    root = _copy_protos(tmp_path)
    assert gen.render(root) == gen.render(root) == gen.render()


SAMPLE = """\
// Sample file: the intro.
syntax = "proto3";

package viridian.v1;

import "google/protobuf/timestamp.proto";

service Sample {
  // Things

  rpc Get(GetRequest) returns (Thing);   // NOT_FOUND | gone; "sha256:<hex>"
  rpc Watch(stream GetRequest) returns (stream Thing);

  // Admin

  // Drops everything.
  rpc Drop(GetRequest) returns (Thing);
}

// A request.
message GetRequest {
  string name = 1;                 // what to get,
                                   // continued on the next line
  optional double wait = 2;        // seconds
  map<string, string> labels = 3;  // all must match
  oneof pick {
    uint32 index = 4;              // by position
    bytes key = 5;                 // by key
  }
  repeated Thing.Kind kinds = 6;   // only these; last comment
                                   // before the brace
}

message Thing {
  enum Kind {
    KIND_UNSPECIFIED = 0;
    KIND_BIG = 1;  // large
  }
  google.protobuf.Timestamp at = 1;
}
"""


def test_render_of_a_sample_proto(tmp_path: Path) -> None:
    pkg = tmp_path / "viridian" / "v1"
    pkg.mkdir(parents=True)
    (pkg / "sample.proto").write_text(SAMPLE)
    out = gen.render(tmp_path)
    assert "Sample file: the intro." in out
    assert "**Things**" in out and "**Admin**" in out
    assert ("| `Get` | [`GetRequest`](#viridian-v1-getrequest) | [`Thing`](#viridian-v1-thing) | "
            "NOT_FOUND \\| gone; \"sha256:&lt;hex>\" |") in out
    assert "| `Watch` | stream [`GetRequest`](#viridian-v1-getrequest) | stream" in out
    assert "| Drops everything. |" in out
    assert "| `name` | `string` | 1 | what to get, continued on the next line |" in out
    assert "| `wait` | optional `double` | 2 | seconds |" in out
    assert "| `labels` | map<`string`, `string`> | 3 | all must match |" in out
    assert "| `index` | `uint32` | 4 | (one of `pick`) by position |" in out
    assert ("| `kinds` | repeated [`Thing.Kind`](#viridian-v1-thing-kind) | 6 | "
            "only these; last comment before the brace |") in out
    assert "### Enum `Thing.Kind`" in out and "| `KIND_BIG` | 1 | large |" in out
    assert "| `at` | `google.protobuf.Timestamp` | 1 |  |" in out
    assert "### Message `GetRequest`\n\nA request.\n" in out


def _readme_docs_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## Documentation\n", 1)[1].split("\n## ", 1)[0]


def test_readme_lists_every_docs_page() -> None:
    section = _readme_docs_section()
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md"))
               if f"(docs/{p.name})" not in section]
    assert not missing, f"README's Documentation section does not list {missing}"


def test_docs_links_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


# Spelled in pieces so this file does not match itself.
_OUTSIDE = [re.compile(p, re.I) for p in (r"design" + r"\.md", r"\.\./" + "shared",
                                          r"design" + " card", r"\bthe " + r"brief\b",
                                          r"\bbrief" + r"'s\b")]
_SCANNED = ("README.md", "docs", "proto", "controller", "node_agent", "tools", "deploy", "bench",
            "tests", "Makefile", "pyproject.toml", ".ci")
_TEXT = {".md", ".py", ".pyi", ".proto", ".toml", ".yaml", ".yml", ".sh", ".c", ".txt", ""}


def test_nothing_points_outside_the_repository() -> None:
    hits = []
    for name in _SCANNED:
        base = ROOT / name
        files = [base] if base.is_file() else sorted(base.rglob("*")) if base.exists() else []
        for f in files:
            if not f.is_file() or f.suffix not in _TEXT or "__pycache__" in f.parts:
                continue
            try:
                text = f.read_text()
            except UnicodeDecodeError:
                continue
            for pat in _OUTSIDE:
                for m in pat.finditer(text):
                    line = text.count("\n", 0, m.start()) + 1
                    hits.append(f"{f.relative_to(ROOT)}:{line}: {m.group(0)}")
    assert not hits, hits


def test_check_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "api.md"
    stale.write_text((ROOT / "docs" / "api.md").read_text().replace("| `GetNode` |", "| `Gone` |"))
    monkeypatch.setattr(gen, "OUT", stale)
    assert gen.main(["--check"]) == 1
    assert "run `make api-docs`" in capsys.readouterr().err
