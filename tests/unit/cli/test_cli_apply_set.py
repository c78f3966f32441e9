"""`viridian set` and `viridian apply -f` against the fake controller."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from cli_fake import FakeController, make_partition
from conftest import Invoke
from viridian.v1 import types_pb2

Phase = types_pb2.PartitionPhase


def test_set_labels_restart_and_size(invoke: Invoke, fake: FakeController) -> None:
    fake._put(make_partition("web", phase=Phase.PARTITION_PHASE_OFF, labels={"old": "1"}))
    result = invoke("set", "web", "--label", "tier=db", "--remove-label", "old",
                    "--restart", "on-failure", "--vcpus", "2", "--memory", "1G")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "partition web updated"
    spec = fake.partitions["web"].spec
    assert dict(spec.labels) == {"tier": "db"}
    assert spec.restart_policy == types_pb2.RESTART_POLICY_ON_FAILURE
    assert (spec.vcpus, spec.memory_bytes) == (2, 1 << 30)
    again = invoke("set", "web", "--label", "tier=db")
    assert again.stdout.strip() == "partition web unchanged"


def test_set_refusals(invoke: Invoke, fake: FakeController) -> None:
    fake._put(make_partition("web"))  # Running
    result = invoke("set", "web", "--vcpus", "2")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "Off or Saved" in result.stderr
    assert "Traceback" not in result.stderr
    nothing = invoke("set", "web")
    assert nothing.exit_code == 2 and "nothing to change" in nothing.stderr
    assert invoke("set", "web", "--memory", "12Q").exit_code == 2
    assert invoke("set", "nope", "--label", "a=b").exit_code == 1


def test_apply_creates_then_is_idempotent_then_configures(
        invoke: Invoke, fake: FakeController, tmp_path: Path) -> None:
    doc = {"name": "web", "spec": {"image": "hello", "vcpus": 1, "memory_bytes": "67108864",
                                   "labels": {"app": "web"}, "desired_state":
                                   "DESIRED_STATE_OFF"}}
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump(doc))
    first = invoke("apply", "-f", str(path))
    assert first.exit_code == 0, first.stderr
    assert first.stdout.strip() == "partition web created"
    assert dict(fake.partitions["web"].spec.labels) == {"app": "web"}
    revision = fake.partitions["web"].revision
    second = invoke("apply", "-f", str(path))
    assert second.stdout.strip() == "partition web unchanged"
    assert fake.partitions["web"].revision == revision and not fake.update_requests

    doc["spec"].update(labels={"app": "web", "tier": "front"}, vcpus=2,  # type: ignore[union-attr]
                       restart_policy="RESTART_POLICY_ALWAYS")
    path.write_text(json.dumps(doc))  # JSON is read too
    third = invoke("apply", "-f", str(path))
    assert third.exit_code == 0, third.stderr
    assert third.stdout.strip() == "partition web configured"
    spec = fake.partitions["web"].spec
    assert dict(spec.labels) == {"app": "web", "tier": "front"} and spec.vcpus == 2
    assert spec.restart_policy == types_pb2.RESTART_POLICY_ALWAYS
    assert fake.update_requests[-1].expected_revision == revision  # compare-and-swap
    assert invoke("apply", "-f", str(path)).stdout.strip() == "partition web unchanged"


def test_apply_what_get_prints_changes_nothing(invoke: Invoke, fake: FakeController,
                                               tmp_path: Path) -> None:
    fake._put(make_partition("web", labels={"a": "1"}))
    fake._put(make_partition("db"))
    path = tmp_path / "all.yaml"
    path.write_text(invoke("ls", "-o", "yaml").stdout)  # a list, status and all
    result = invoke("apply", "-f", str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["partition db unchanged", "partition web unchanged"]
    # Edited: a label removed, a new partition added.
    items = yaml.safe_load(path.read_text())
    items[1]["spec"]["labels"] = {}
    items.append({"name": "cache", "spec": {"image": "hello"}})
    path.write_text(yaml.safe_dump(items))
    result = invoke("apply", "-f", str(path))
    assert result.stdout.splitlines() == ["partition db unchanged",
                                          "partition web configured",
                                          "partition cache created"]
    assert dict(fake.partitions["web"].spec.labels) == {}
    assert fake.update_requests[-1].remove_labels == ["a"]


def test_apply_names_a_field_that_cannot_change(invoke: Invoke, fake: FakeController,
                                                tmp_path: Path) -> None:
    fake._put(make_partition("web"))
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump({"name": "web", "spec": {"image": "other",
                                                            "labels": {"x": "y"}}}))
    result = invoke("apply", "-f", str(path))
    assert result.exit_code == 1
    assert "spec.image cannot change" in result.stderr
    assert not fake.update_requests  # nothing half-applied
    running = tmp_path / "size.yaml"
    running.write_text(yaml.safe_dump({"name": "web", "spec": {"memoryBytes": "1073741824"}}))
    result = invoke("apply", "-f", str(running))
    assert result.exit_code == 1 and "Off or Saved" in result.stderr


def test_apply_bad_files(invoke: Invoke, tmp_path: Path) -> None:
    cases = {
        "a: [": "not YAML or JSON",
        "- 1\n": "expected a partition",
        "spec: {image: hello}\n": "needs a name",
        "name: w\nspec: {vcpu: 2}\n": "vcpu",
        "name: w\nbogus: 1\n": "bogus",
        "": "no partition",
        "- {name: a}\n- {name: a}\n": "named twice",
    }
    for text, needle in cases.items():
        path = tmp_path / "f.yaml"
        path.write_text(text)
        result = invoke("apply", "-f", str(path))
        assert result.exit_code == 1, text
        assert needle in result.stderr and "Traceback" not in result.stderr, result.stderr
    missing = invoke("apply", "-f", str(tmp_path / "absent.yaml"))
    assert missing.exit_code == 1 and "cannot read" in missing.stderr


def test_apply_from_stdin(invoke: Invoke, fake: FakeController) -> None:
    result = invoke("apply", "-f", "-", input='{"name": "w", "spec": {"image": "hello"}}')
    assert result.exit_code == 0, result.stderr
    assert "w" in fake.partitions
