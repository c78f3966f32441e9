"""What a partition's first process runs, from its image's config and its own spec, with
docker run's rules:

  argv     [entrypoint] + entry_args + (spec.args, or the image's cmd when there are none);
           spec.entrypoint replaces the image's entrypoint and drops its entry_args and its
           cmd (the defaults were meant for the image's program): argv is then
           [spec.entrypoint] + spec.args
  env      the image's "KEY=VALUE" list, overlaid by spec.env
  workdir  spec.workdir, else the image's, else "/"

The image's fields arrive over the network: anything malformed is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from viridian.v1 import types_pb2 as pb


class ImageConfigError(ValueError):
    pass


@dataclass(frozen=True)
class GuestCommand:
    entrypoint: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    workdir: str


def _env_of(image: pb.Image) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in image.env:
        key, sep, value = entry.partition("=")
        if not sep or not key or "\0" in entry:
            raise ImageConfigError(
                f"image {image.name!r} has an environment entry that is not KEY=VALUE: "
                f"{entry[:80]!r}")
        env[key] = value
    return env


def _absolute(path: str, what: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise ImageConfigError(f"{what} must be an absolute guest path: {path[:200]!r}")
    return path


def guest_command(image: pb.Image, spec: pb.PartitionSpec) -> GuestCommand:
    if spec.entrypoint:
        entrypoint = _absolute(spec.entrypoint, "the entrypoint")
        args = list(spec.args)
    else:
        entrypoint = _absolute(image.entrypoint, f"image {image.name!r}'s entrypoint")
        args = list(image.entry_args) + list(spec.args or image.cmd)
    env = _env_of(image)
    for key in sorted(spec.env):
        env[key] = spec.env[key]
    if spec.workdir:
        workdir = _absolute(spec.workdir, "the working directory")
    elif image.workdir:
        workdir = _absolute(image.workdir, f"image {image.name!r}'s working directory")
    else:
        workdir = "/"
    return GuestCommand(entrypoint, tuple(args), tuple(env.items()), workdir)
