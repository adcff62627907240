"""A run killed part-way and run again stores exactly what an uninterrupted run stores."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

PROTOCOL = {
    "name": "resume_check",
    "dataset": {"name": "iris", "test_point": 83},
    "model": {"name": "mlp", "depth": 1, "width": 5},
    "training": {"lr": 0.01, "epochs": 800, "weight_decay": 0.01},
    "grid": {"model.width": [4, 6]},
    "points": {"strategy": "top_loss", "k": 8},
    "estimators": [{"name": "exact"}],
    "ground_truths": [{"name": "retrain_from_optimum", "epochs": 200}],
    "scorers": ["spearman", "pearson"],
    "repetitions": 5,
    "batch_size": 2,
}
TOTAL = 10
TABLES = {
    "trials": "SELECT trial_id, condition_id, repetition, seed, training FROM trials",
    "points": "SELECT * FROM points",
    "estimates": "SELECT * FROM estimates",
    "truths": "SELECT * FROM truths",
    "scores": "SELECT * FROM scores",
}


def ifval_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from ifval.cli import main; main()", *args]


def stored_trials(run_dir: Path) -> int:
    path = run_dir / "ifval.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path) as connection:
            return connection.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def table_rows(run_dir: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(run_dir / "ifval.sqlite") as connection:
        return {name: sorted(connection.execute(query).fetchall(), key=repr)
                for name, query in TABLES.items()}


@pytest.mark.slow
def test_killed_run_resumes_to_same_results(tmp_path):
    protocol_path = tmp_path / "protocol.yaml"
    protocol_path.write_text(yaml.safe_dump(PROTOCOL))
    interrupted, uninterrupted = tmp_path / "interrupted", tmp_path / "uninterrupted"

    process = subprocess.Popen(ifval_command("run", str(protocol_path), "-o", str(interrupted),
                                             "--no-report"))
    deadline = time.monotonic() + 300
    while stored_trials(interrupted) < 2 and process.poll() is None:
        assert time.monotonic() < deadline, "no trial was stored within 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = stored_trials(interrupted)
    assert 2 <= at_kill < TOTAL

    subprocess.run(ifval_command("run", str(protocol_path), "-o", str(interrupted),
                                 "--no-report"), check=True)
    subprocess.run(ifval_command("run", str(protocol_path), "-o", str(uninterrupted),
                                 "--no-report"), check=True)

    resumed, reference = table_rows(interrupted), table_rows(uninterrupted)
    assert len(resumed["trials"]) == TOTAL
    for name in TABLES:
        assert resumed[name] == reference[name], f"table {name} differs after resuming"


@pytest.mark.slow
def test_second_run_computes_nothing(tmp_path):
    protocol = {**PROTOCOL, "repetitions": 1, "grid": {}}
    protocol_path = tmp_path / "protocol.yaml"
    protocol_path.write_text(yaml.safe_dump(protocol))
    run_dir = tmp_path / "run"
    command = ifval_command("run", str(protocol_path), "-o", str(run_dir), "--no-report")

    subprocess.run(command, check=True, capture_output=True)
    again = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "0 trials computed, 1 already stored" in again.stderr
