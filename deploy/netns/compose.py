"""Reading a compose file: its services, their commands (the entrypoint from the compose file
or else from the service's Dockerfile, then the command), environment, depends_on conditions,
health checks, restart policies, volumes, hostnames and profiles."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ClusterError

__all__ = ["HealthCheck", "Service", "load_compose", "parse_duration"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_duration(text: str | int | float | None, default: float) -> float:
    """Compose durations: "1m30s", "500ms", "10s"; a bare number is seconds."""
    if text is None:
        return default
    if isinstance(text, int | float):
        return float(text)
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ClusterError(f"bad duration {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass
class HealthCheck:
    argv: list[str]  # already resolved: CMD args, or ["sh", "-c", CMD-SHELL]
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0
    start_interval: float = 5.0


@dataclass
class Service:
    name: str
    argv: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    depends_on: dict[str, str] = field(default_factory=dict)  # service -> condition
    healthcheck: HealthCheck | None = None
    restart: str = "no"
    volumes: list[tuple[str, str]] = field(default_factory=list)  # (source, mount path)
    hostname: str = ""
    profiles: list[str] = field(default_factory=list)


def _as_argv(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list):
        return [str(v) for v in value]
    raise ClusterError(f"{what}: expected a string or a list, got {type(value).__name__}")


def _dockerfile_entrypoint(compose_dir: Path, build: Any) -> list[str]:
    """The last ENTRYPOINT (exec form) of the service's Dockerfile, or []."""
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    elif isinstance(build, dict):
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    else:
        return []
    path = (compose_dir / context / dockerfile).resolve()
    entrypoint: list[str] = []
    for line in path.read_text().splitlines():
        if line.strip().upper().startswith("ENTRYPOINT"):
            rest = line.strip()[len("ENTRYPOINT"):].strip()
            try:
                entrypoint = [str(v) for v in json.loads(rest)]
            except ValueError:
                entrypoint = ["sh", "-c", rest]
    return entrypoint


def _environment(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    env: dict[str, str] = {}
    for item in value:
        key, _, val = str(item).partition("=")
        env[key] = val
    return env


def _healthcheck(value: Any) -> HealthCheck | None:
    if not value or value.get("disable"):
        return None
    test = value.get("test")
    if isinstance(test, str):
        argv = ["sh", "-c", test]
    elif isinstance(test, list) and test and test[0] == "CMD":
        argv = [str(v) for v in test[1:]]
    elif isinstance(test, list) and test and test[0] == "CMD-SHELL":
        argv = ["sh", "-c", " ".join(str(v) for v in test[1:])]
    elif isinstance(test, list) and test and test[0] == "NONE":
        return None
    else:
        raise ClusterError(f"unsupported healthcheck test {test!r}")
    return HealthCheck(
        argv=argv,
        interval=parse_duration(value.get("interval"), 30.0),
        timeout=parse_duration(value.get("timeout"), 30.0),
        retries=int(value.get("retries", 3)),
        start_period=parse_duration(value.get("start_period"), 0.0),
        start_interval=parse_duration(value.get("start_interval"), 5.0),
    )


def _volumes(service: str, value: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i, item in enumerate(value or []):
        if isinstance(item, dict):
            source, target = str(item.get("source") or ""), str(item["target"])
        else:
            parts = str(item).split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        out.append((source or f"{service}-anonymous-{i}", target))
    return out


def load_compose(path: Path) -> dict[str, Service]:
    """The services of a compose file, as this runner understands them."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ClusterError(f"{path}: no services")
    services: dict[str, Service] = {}
    for name, spec in data["services"].items():
        spec = spec or {}
        if "entrypoint" in spec:
            entrypoint = _as_argv(spec["entrypoint"], f"{name}.entrypoint")
        else:
            entrypoint = _dockerfile_entrypoint(path.parent, spec.get("build"))
        argv = entrypoint + _as_argv(spec.get("command"), f"{name}.command")
        if not argv:
            raise ClusterError(f"service {name}: no entrypoint or command to run")
        deps = spec.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        services[name] = Service(
            name=name,
            argv=argv,
            environment=_environment(spec.get("environment")),
            depends_on={d: (c or {}).get("condition", "service_started")
                        for d, c in deps.items()},
            healthcheck=_healthcheck(spec.get("healthcheck")),
            restart=str(spec.get("restart", "no")),
            volumes=_volumes(name, spec.get("volumes")),
            hostname=str(spec.get("hostname") or ""),
            profiles=[str(p) for p in spec.get("profiles") or []],
        )
    for svc in services.values():
        for dep in svc.depends_on:
            if dep not in services:
                raise ClusterError(f"service {svc.name} depends on unknown service {dep}")
    return services
