"""The ``ifval`` command line: run, validate, plugins, report, export."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from ifval import __version__
from ifval.errors import IfvalError

logger = logging.getLogger("ifval")


class IfvalGroup(click.Group):
    """Prints an :class:`IfvalError` as one line and exits with its code; other errors propagate."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except IfvalError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=IfvalGroup)
@click.version_option(__version__, prog_name="ifval")
@click.option("-v", "--verbose", count=True, help="Log more: -v for info, -vv for debug.")
def cli(verbose: int) -> None:
    """Validate influence-function estimates and the procedures that validate them."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.argument("protocol_file", type=click.Path(dir_okay=False, path_type=Path))
def validate(protocol_file: Path) -> None:
    """Check PROTOCOL_FILE without running it; exit code 2 when it is invalid."""
    from ifval.protocol import expand_conditions, load_protocol

    protocol = load_protocol(protocol_file)
    conditions = expand_conditions(protocol)
    trials = len(conditions) * protocol.repetitions
    click.echo(f"{protocol_file}: valid; {len(conditions)} conditions × "
               f"{protocol.repetitions} repetitions = {trials} trials")


@cli.command()
@click.argument("protocol_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory; overrides the protocol's `output`.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Worker processes of the local executor; overrides the protocol.")
@click.option("--no-report", is_flag=True, help="Store the trials but skip the report.")
def run(protocol_file: Path, output: Path | None, workers: int | None, no_report: bool) -> None:
    """Run PROTOCOL_FILE, resuming from the trials already stored in its run directory."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ifval.protocol import load_protocol
    from ifval.runner import run_protocol

    protocol = load_protocol(protocol_file)
    if workers is not None:
        protocol.executor = protocol.executor.model_copy(update={"workers": workers})
    text = protocol_file.read_text(encoding="utf-8")
    console = Console(stderr=True)
    started = time.perf_counter()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("trials"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(protocol.name, total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)
            if not console.is_terminal:
                logger.info("%d of %d trials stored", done, total)

        try:
            summary = run_protocol(protocol, text, output=output, progress=advance)
        except KeyboardInterrupt:
            progress.stop()
            console.print("interrupted; every finished trial is stored. "
                          "Run the same command again to resume.")
            sys.exit(130)
    elapsed = time.perf_counter() - started
    console.print(f"{summary.computed} trials computed, {summary.already_stored} already stored, "
                  f"in {elapsed:.1f} s; run directory: {summary.run_dir}")
    if not no_report:
        _print_report(summary.run_dir)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def report(run_dir: Path) -> None:
    """Rebuild the tables, ANOVA and figures of RUN_DIR from its store."""
    _print_report(run_dir)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv",
              show_default=True, help="File format of the exported tables.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the tables; default RUN_DIR/export.")
def export(run_dir: Path, fmt: str, output: Path | None) -> None:
    """Write the scores, points and trials tables of RUN_DIR as CSV or Parquet."""
    from ifval.export import export_run

    for path in export_run(run_dir, fmt, output):
        click.echo(str(path))


@cli.command()
def plugins() -> None:
    """List every installed plugin with its kind, name, package and description."""
    from rich.console import Console
    from rich.table import Table

    from ifval.plugins import default_catalog

    table = Table("kind", "name", "package", "description")
    for kind, entry in default_catalog().entries():
        table.add_row(kind, entry.plugin.name, entry.distribution, entry.plugin.description)
    Console(width=160).print(table)


def _print_report(run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from ifval.report.build import build_report

    built = build_report(run_dir)
    console = Console(width=160)
    if built.cells.empty:
        console.print(f"{run_dir}: no stored trials yet")
        return
    table = Table(title=f"{built.name}: mean score and 95% interval per cell")
    columns = [*built.factors, "estimator", "ground_truth", "scorer"]
    for column in [*columns, "mean", "95% interval", "n", "NaN"]:
        table.add_column(column)
    for values in built.cells.to_dict(orient="records"):
        interval = f"[{values['ci_low']:.3f}, {values['ci_high']:.3f}]"
        table.add_row(*(str(values[c]) for c in columns), f"{values['mean']:.3f}", interval,
                      str(values["n"]), str(values["n_nan"]))
    console.print(table)
    if not built.anova.empty:
        anova = Table(title="One-way ANOVA across each factor")
        for column in ["factor", "fixed", "estimator", "ground_truth", "scorer", "F", "p", "η²",
                       "verdict"]:
            anova.add_column(column)
        for values in built.anova.to_dict(orient="records"):
            anova.add_row(values["factor"], values["fixed"], values["estimator"],
                          values["ground_truth"], values["scorer"], f"{values['F']:.3g}",
                          f"{values['p']:.3g}", f"{values['eta_squared']:.3g}", values["verdict"])
        console.print(anova)
    for path in built.files:
        console.print(f"wrote {path}")


def main() -> None:
    import warnings

    # NOTE: torch 2.14's torch.func.hessian calls the deprecated torch.jit.script
    # internally; the warning says nothing about ifval's use and is hidden here.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated",
                            category=FutureWarning)
    cli(prog_name="ifval")
