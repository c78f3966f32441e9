"""`viridian explain`: why placement picks (or cannot pick) a node."""

from __future__ import annotations

from collections.abc import Sequence

import click
from viridian.v1 import controller_pb2, types_pb2

from controller.cli._spec import build_spec, spec_options
from controller.cli.app import get_client
from controller.cli.completion import partition_names
from controller.cli.output import dump, message_data, render_table
from controller.cli.params import output_option

__all__ = ["COMMANDS", "render_explanation"]

PASS, FAIL = "ok", "FAIL"


def _filter_cell(result: types_pb2.FilterResult | None, wide: bool) -> str:
    if result is None:
        return "-"
    if result.passed:
        return f"{PASS} ({result.detail})" if wide and result.detail else PASS
    reason = result.reason_code or "failed"
    return f"{FAIL} {reason}: {result.detail}" if result.detail else f"{FAIL} {reason}"


def _scores(verdict: types_pb2.NodeVerdict) -> str:
    if not verdict.passed:
        return "-"
    parts = [f"{s.name} {s.raw:.2f}x{s.weight:g}={s.weighted:.2f}" for s in verdict.scores]
    return ", ".join(parts) or "-"


def render_explanation(exp: types_pb2.PlacementExplanation, output: str) -> str:
    """One row per node, one column per filter (pass/fail with detail), then the scores."""
    if output in ("json", "yaml"):
        return dump(message_data(exp), output)
    wide = output == "wide"
    filter_names: list[str] = []
    for verdict in exp.verdicts:
        for f in verdict.filters:
            if f.name not in filter_names:
                filter_names.append(f.name)
    headers = ["NODE", "FITS", *(n.upper() for n in filter_names), "SCORE", "BREAKDOWN"]
    verdicts = sorted(exp.verdicts, key=lambda v: (not v.chosen, not v.passed, -v.total, v.node))
    rows: list[Sequence[str]] = []
    for v in verdicts:
        by_name = {f.name: f for f in v.filters}
        marker = "* " if v.chosen else "  "
        rows.append([
            marker + v.node + (" (current)" if v.node == exp.current_node else ""),
            "yes" if v.passed else "no",
            *(_filter_cell(by_name.get(n), wide) for n in filter_names),
            f"{v.total:.2f}" if v.passed else "-",
            _scores(v),
        ])
    lines = [render_table(headers, rows), ""]
    chosen = exp.chosen_node or "none"
    lines.append(f"{exp.partition or '(dry run)'}: chosen node {chosen}")
    if exp.summary:
        lines.append(exp.summary)
    return "\n".join(lines)


@click.command("explain")
@click.argument("name", required=False, shell_complete=partition_names)
@click.option("--dry-run", is_flag=True, help="Explain a partition that does not exist yet.")
@spec_options(image_required=False, placement_only=True)
@output_option
@click.pass_context
def explain_cmd(ctx: click.Context, /, name: str | None, dry_run: bool, output: str,
                **flags: object) -> None:
    """Explain placement for partition NAME, or for a --dry-run spec."""
    source = ctx.get_parameter_source
    spec_given = [k for k in flags if source(k) == click.core.ParameterSource.COMMANDLINE]
    if name and dry_run:
        raise click.UsageError("give either NAME or --dry-run, not both")
    if not name and not dry_run:
        raise click.UsageError("give a partition NAME, or --dry-run --image IMG [...]")
    if name and spec_given:
        raise click.UsageError(
            f"--{spec_given[0].replace('_', '-')} only makes sense with --dry-run")
    if dry_run and not flags.get("image"):
        raise click.UsageError("--dry-run needs --image IMG")
    if dry_run:
        spec = build_spec(**flags)  # type: ignore[arg-type]
        request = controller_pb2.ExplainPlacementRequest(dry_run=spec)
    else:
        request = controller_pb2.ExplainPlacementRequest(name=name or "")
    exp = get_client(ctx).stub.ExplainPlacement(request)
    click.echo(render_explanation(exp, output))


COMMANDS = [explain_cmd]
