"""Export a run's tables as CSV or Parquet."""

from __future__ import annotations

from pathlib import Path

from ifval.errors import IfvalError
from ifval.store import RunStore


def export_run(run_dir: str | Path, fmt: str, output: str | Path | None = None) -> list[Path]:
    """Write ``scores``, ``points`` and ``trials`` tables; return the files written."""
    run_dir = Path(run_dir)
    out = Path(output) if output is not None else run_dir / "export"
    with RunStore(run_dir) as store:
        tables = {
            "scores": store.scores_frame(),
            "points": store.points_frame(),
            "trials": store.trials_frame(),
        }
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in tables.items():
        path = out / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "parquet":
            try:
                frame.to_parquet(path, index=False)
            except ImportError as exc:
                msg = "Parquet export needs pyarrow: pip install 'ifval[parquet]'"
                raise IfvalError(msg) from exc
        else:
            raise IfvalError(f"unknown export format {fmt!r}; use csv or parquet")
        paths.append(path)
    return paths
