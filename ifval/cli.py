"""The ``ifval`` command line: run, validate, plugins, report, stats, export."""

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
               TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(f"{protocol.name} (loading data, checking conditions)",
                                 total=None, unit="trials")
        stage_task = progress.add_task("batch", total=None, visible=False, unit="steps")
        state = {"stored": 0, "batch": "", "share": 0.0}

        def advance(done: int, total: int) -> None:
            state["stored"] = done
            state["share"] = 0.0
            progress.update(task, description=protocol.name, completed=done, total=total)
            if not console.is_terminal:
                logger.info("%d of %d trials stored", done, total)

        def show_stage(batch: str, trials: int, stage: str, done: int, total: int) -> None:
            # The main bar moves within a batch too, so its ETA does not wait for
            # whole batches: training counts as the first half of a batch.
            fraction = done / total if total else 0.0
            share = 0.5 * fraction if stage == "training" else 0.5 + 0.5 * fraction
            if batch != state["batch"]:
                state["batch"], state["share"] = batch, 0.0
            state["share"] = max(state["share"], share)
            progress.update(task, completed=state["stored"] + trials * state["share"])
            progress.update(stage_task, description=f"  {stage}", completed=done, total=total,
                            visible=True)

        try:
            summary = run_protocol(protocol, text, output=output, progress=advance,
                                   stage_progress=show_stage)
            progress.update(stage_task, visible=False)
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


# Choices of `ifval stats`, equal to those of ifval.stats (a test checks this). The CLI
# does not import ifval.stats at start-up, because that loads pandas.
POST_HOC_CHOICES = ("auto", "tukey", "games_howell", "t_test", "none")
P_ADJUST_CHOICES = ("holm", "bonf", "sidak", "fdr_bh", "fdr_by", "none")

_OPEN_UNIT = click.FloatRange(0, 1, min_open=True, max_open=True)


@cli.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--pattern", metavar="TEMPLATE",
              help="For a folder: path of each .npy file relative to RESULTS, with {name} for a "
              "factor level and {measure} for the quantity stored, such as "
              "'{measure}_width{width}.npy'; * matches any text. Default: '{condition}.npy'.")
@click.option("--value", "values", multiple=True, metavar="COLUMN",
              help="For a table: column of per-repetition values; repeat for several.")
@click.option("--factor", "factors", multiple=True, metavar="NAME",
              help="Factor to analyse; repeat for several. Default: every column or pattern "
              "field that is not a value.")
@click.option("--two-way", "two_way", nargs=2, multiple=True, metavar="A B",
              help="Factor pair of a two-way ANOVA; repeat for several. Default: every pair.")
@click.option("--no-two-way", is_flag=True, help="Skip the two-way ANOVAs.")
@click.option("--post-hoc", type=click.Choice(POST_HOC_CHOICES), default="auto",
              show_default=True,
              help="Pairwise tests: auto is Tukey's HSD, or Games-Howell when Levene's test "
              "rejects equal variances; t_test applies --p-adjust.")
@click.option("--p-adjust", type=click.Choice(P_ADJUST_CHOICES), default="holm",
              show_default=True, help="Multiple-comparison correction of t_test post-hoc tests.")
@click.option("--confidence", type=_OPEN_UNIT, default=0.95, show_default=True,
              help="Level of the interval of each cell mean.")
@click.option("--interval", type=click.Choice(["t", "bootstrap"]), default="t",
              show_default=True, help="Student-t interval, or bootstrap BCa.")
@click.option("--resamples", type=click.IntRange(min=100), default=9999, show_default=True,
              help="Resamples of each bootstrap interval.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the bootstrap.")
@click.option("--alpha", type=_OPEN_UNIT, default=0.05, show_default=True,
              help="Significance level of verdicts, Levene's test and post-hoc tests.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the tables and settings as JSON to this file.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Write CSV tables, summary.md, summary.json and a figure into this folder.")
def stats(results: Path, pattern: str | None, values: tuple[str, ...], factors: tuple[str, ...],
          two_way: tuple[tuple[str, str], ...], no_two_way: bool, post_hoc: str, p_adjust: str,
          confidence: float, interval: str, resamples: int, seed: int, alpha: float,
          json_path: Path | None, output: Path | None) -> None:
    """Re-analyse per-repetition results produced elsewhere, with the tables of `ifval report`.

    RESULTS is a CSV, TSV or Parquet table with one row per repetition, or a
    folder of .npy files that each hold one condition's per-repetition values.
    """
    from rich.console import Console

    from ifval.reanalysis import MEASURE, read_results
    from ifval.report.tables import display_tables
    from ifval.stats import AnalysisOptions, analyse

    read = read_results(results, pattern, values, factors)
    for pair in two_way:
        for name in pair:
            if name not in read.factors:
                raise IfvalError(f"--two-way {pair[0]} {pair[1]}: {name!r} is not a factor; "
                                 f"factors: {', '.join(read.factors) or 'none'}")
    options = AnalysisOptions(
        confidence=confidence, interval=interval, resamples=resamples, seed=seed, alpha=alpha,
        two_way=[] if no_two_way else (list(two_way) or None), post_hoc=post_hoc,
        p_adjust=p_adjust)
    analysis = analyse(read.frame, read.factors, read.keys, "value", options)
    dependent = MEASURE if MEASURE in read.keys else None
    tables = display_tables(analysis, read.source.name, read.value_name, dependent)

    console = Console(width=160)
    described = f"{len(read.files)} files" if read.files else f"{len(read.frame)} rows"
    console.print(f"{read.source}: {described}; factors: {', '.join(read.factors) or 'none'}")
    if read.skipped:
        console.print(f"left out {len(read.skipped)} .npy files that do not match the pattern, "
                      f"first: {read.skipped[0]}")
    _print_tables(console, tables)
    header = {"source": str(read.source), "files": read.files, "skipped_files": read.skipped}
    if json_path is not None:
        from ifval.report.summary import write_json

        json_path.parent.mkdir(parents=True, exist_ok=True)
        console.print(f"wrote {write_json(json_path, analysis, header)}")
    if output is not None:
        for path in _write_reanalysis(output, analysis, tables, header, read.source.name):
            console.print(f"wrote {path}")


def _write_reanalysis(out: Path, analysis: Any, tables: list[Any], header: dict[str, Any],
                      name: str) -> list[Path]:
    from ifval.reanalysis import MEASURE
    from ifval.report.plots import plot_scores
    from ifval.report.summary import markdown_summary, write_json, write_tables

    out.mkdir(parents=True, exist_ok=True)
    files = write_tables(analysis, out)
    figures = plot_scores(analysis.cells, analysis.factors, out,
                          stem="means", confidence=analysis.options.confidence, keys=(),
                          panel=MEASURE)
    files.append(write_json(out / "summary.json", analysis, header))
    markdown = out / "summary.md"
    markdown.write_text(markdown_summary(name, [f"Re-analysis of {header['source']}."], tables,
                                         figures), encoding="utf-8")
    return [*files, markdown, *figures]


def _print_report(run_dir: Path) -> None:
    from rich.console import Console

    from ifval.report.build import build_report

    built = build_report(run_dir)
    console = Console(width=160)
    if built.cells.empty:
        console.print(f"{run_dir}: no stored trials yet")
        return
    _print_tables(console, built.tables)
    for path in built.files:
        console.print(f"wrote {path}")


def _print_tables(console: Any, tables: list[Any]) -> None:
    """Print report tables (:class:`ifval.report.tables.DisplayTable`) as rich tables."""
    from rich.table import Table

    for table in tables:
        if table.frame.empty:
            console.print(f"[bold]{table.title}[/bold]")
        else:
            rich_table = Table(*map(str, table.frame.columns), title=table.title)
            for row in table.frame.itertuples(index=False):
                rich_table.add_row(*map(str, row))
            console.print(rich_table)
        if table.note:
            console.print(table.note)


def main() -> None:
    import warnings

    # NOTE: torch 2.14's torch.func.hessian calls the deprecated torch.jit.script
    # internally; the warning concerns torch, not ifval's use, and is hidden here.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated",
                            category=FutureWarning)
    cli(prog_name="ifval")
