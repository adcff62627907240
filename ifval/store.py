"""The run store: SQLite in the run directory, one transaction per finished trial.

A trial is in the store completely or not at all, so an interrupted run
resumes by skipping the trials found here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ifval import __version__
from ifval.errors import StoreError

logger = logging.getLogger(__name__)

STORE_NAME = "ifval.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conditions (
    condition_id TEXT PRIMARY KEY, position INTEGER NOT NULL,
    factors TEXT NOT NULL, config TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    trial_id TEXT PRIMARY KEY, condition_id TEXT NOT NULL REFERENCES conditions,
    repetition INTEGER NOT NULL, seed INTEGER NOT NULL, test_ids TEXT NOT NULL,
    dataset_info TEXT NOT NULL, training TEXT NOT NULL, timings TEXT NOT NULL,
    finished_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    trial_id TEXT NOT NULL REFERENCES trials, position INTEGER NOT NULL,
    train_row INTEGER NOT NULL, dataset_row INTEGER NOT NULL, label INTEGER NOT NULL,
    training_loss REAL, PRIMARY KEY (trial_id, position));
CREATE TABLE IF NOT EXISTS group_members (
    trial_id TEXT NOT NULL REFERENCES trials, position INTEGER NOT NULL,
    train_row INTEGER NOT NULL, dataset_row INTEGER NOT NULL,
    PRIMARY KEY (trial_id, position, train_row));
CREATE TABLE IF NOT EXISTS estimates (
    trial_id TEXT NOT NULL REFERENCES trials, estimator TEXT NOT NULL,
    normalisation TEXT NOT NULL, position INTEGER NOT NULL, value REAL,
    PRIMARY KEY (trial_id, estimator, normalisation, position));
CREATE TABLE IF NOT EXISTS truths (
    trial_id TEXT NOT NULL REFERENCES trials, ground_truth TEXT NOT NULL,
    normalisation TEXT NOT NULL, position INTEGER NOT NULL, value REAL,
    diagnostics TEXT NOT NULL, PRIMARY KEY (trial_id, ground_truth, position));
CREATE TABLE IF NOT EXISTS scores (
    trial_id TEXT NOT NULL REFERENCES trials, estimator TEXT NOT NULL,
    ground_truth TEXT NOT NULL, scorer TEXT NOT NULL, value REAL, reason TEXT,
    PRIMARY KEY (trial_id, estimator, ground_truth, scorer));
"""

RESULT_INDEPENDENT_FIELDS = ("description", "repetitions", "output", "executor", "statistics",
                             "batch_size")
"""Protocol fields that may change between runs into one directory: none alters a trial."""


def protocol_fingerprint(protocol_data: dict[str, Any]) -> str:
    """Hash of the protocol fields that determine a trial's results."""
    relevant = {k: v for k, v in protocol_data.items() if k not in RESULT_INDEPENDENT_FIELDS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _number(value: float | None) -> float | None:
    """SQLite has no NaN; store it as NULL (scores keep their reason beside it)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


class RunStore:
    """Read and write access to one run directory's store."""

    def __init__(self, run_dir: str | Path, create: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_NAME
        if not create and not self.path.exists():
            msg = (f"no ifval run store in {self.run_dir} (expected {self.path}); "
                   "run `ifval run` first")
            raise StoreError(msg)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(self.path)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA foreign_keys=ON")
        self.connection.executescript(SCHEMA)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol and conditions

    def bind_protocol(self, protocol_data: dict[str, Any], protocol_text: str) -> bool:
        """Record the protocol, or check it matches the one already recorded.

        Returns True when the store already held trials of this protocol.
        """
        fingerprint = protocol_fingerprint(protocol_data)
        stored = self.meta("fingerprint")
        if stored is not None and stored != fingerprint and self.finished_trials():
            changed = self._changed_fields(protocol_data)
            msg = (
                f"run directory {self.run_dir} holds results of a different protocol "
                f"(changed: {', '.join(changed) or 'unknown'}; only description, repetitions, "
                "batch_size, executor, statistics and output may change between runs into one "
                "directory); set another `output`, or delete the directory to start over"
            )
            raise StoreError(msg)
        with self.connection:
            self._set_meta("fingerprint", fingerprint)
            self._set_meta("protocol", json.dumps(protocol_data, default=str))
            self._set_meta("protocol_yaml", protocol_text)
            self._set_meta("ifval_version", __version__)
            if stored is None:
                self._set_meta("created_at", datetime.now(UTC).isoformat())
        return stored is not None

    def _changed_fields(self, protocol_data: dict[str, Any]) -> list[str]:
        """Top-level protocol fields that differ from the recorded protocol."""
        recorded = json.loads(self.meta("protocol") or "{}")
        fields = sorted(set(recorded) | set(protocol_data))
        return [name for name in fields if name not in RESULT_INDEPENDENT_FIELDS
                and json.dumps(recorded.get(name), sort_keys=True, default=str)
                != json.dumps(protocol_data.get(name), sort_keys=True, default=str)]

    def meta(self, key: str) -> str | None:
        row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.connection.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def protocol_data(self) -> dict[str, Any]:
        raw = self.meta("protocol")
        if raw is None:
            raise StoreError(f"the store in {self.run_dir} has no protocol recorded")
        return json.loads(raw)

    def add_conditions(self, conditions: Iterable[Any]) -> None:
        with self.connection:
            for position, condition in enumerate(conditions):
                self.connection.execute(
                    "INSERT INTO conditions VALUES (?, ?, ?, ?) ON CONFLICT(condition_id) "
                    "DO UPDATE SET position = excluded.position",
                    (condition.id, position, json.dumps(condition.factors, default=str),
                     json.dumps(condition.config, default=str)))

    # -- trials

    def finished_trials(self) -> set[str]:
        return {row[0] for row in self.connection.execute("SELECT trial_id FROM trials")}

    def write_trial(self, record: dict[str, Any]) -> None:
        """Store one finished trial in a single transaction; a stored trial is left as it is."""
        trial = record["trial_id"]
        with self.connection:
            cursor = self.connection.execute(
                "INSERT OR IGNORE INTO trials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (trial, record["condition_id"], record["repetition"], record["seed"],
                 json.dumps(record["test_ids"]), json.dumps(record["dataset_info"], default=str),
                 json.dumps(record["training"]), json.dumps(record["timings"]),
                 datetime.now(UTC).isoformat()))
            if cursor.rowcount == 0:
                logger.info("trial %s is already stored; keeping the stored result", trial)
                return
            self.connection.executemany(
                "INSERT INTO points VALUES (?, ?, ?, ?, ?, ?)",
                [(trial, i, p["train_row"], p["dataset_row"], p["label"],
                  _number(p["training_loss"])) for i, p in enumerate(record["points"])])
            self.connection.executemany(
                "INSERT INTO group_members VALUES (?, ?, ?, ?)",
                [(trial, i, row, dataset_row) for i, p in enumerate(record["points"])
                 for row, dataset_row in zip(p.get("members", ()), p.get("dataset_members", ()),
                                             strict=True)])
            self.connection.executemany(
                "INSERT INTO estimates VALUES (?, ?, ?, ?, ?)",
                [(trial, e["estimator"], e["normalisation"], i, _number(v))
                 for e in record["estimates"] for i, v in enumerate(e["values"])])
            self.connection.executemany(
                "INSERT INTO truths VALUES (?, ?, ?, ?, ?, ?)",
                [(trial, t["ground_truth"], t["normalisation"], i, _number(v),
                  json.dumps(t["diagnostics"][i]))
                 for t in record["truths"] for i, v in enumerate(t["values"])])
            self.connection.executemany(
                "INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?)",
                [(trial, s["estimator"], s["ground_truth"], s["scorer"], _number(s["value"]),
                  s["reason"]) for s in record["scores"]])

    # -- tables for analysis

    def scores_frame(self):  # type: ignore[no-untyped-def]
        """Read one row per (trial, estimator, ground truth, scorer) with its factors."""
        import pandas as pd

        frame = pd.read_sql_query(
            "SELECT s.*, t.condition_id, t.repetition, t.seed, c.position AS condition_position, "
            "c.factors FROM scores s JOIN trials t USING (trial_id) "
            "JOIN conditions c USING (condition_id) ORDER BY c.position, t.repetition",
            self.connection)
        return _expand_factors(frame)

    def points_frame(self):  # type: ignore[no-untyped-def]
        """Read one row per checked point and (estimator, ground truth) with estimate and truth."""
        import pandas as pd

        frame = pd.read_sql_query(
            "SELECT tr.trial_id, t.condition_id, t.repetition, t.seed, c.factors, "
            "p.position, p.train_row, p.dataset_row, p.label, p.training_loss, "
            "tr.ground_truth, tr.normalisation, tr.value AS truth, "
            "e.estimator, e.value AS estimate "
            "FROM truths tr JOIN trials t USING (trial_id) "
            "JOIN conditions c USING (condition_id) "
            "JOIN points p ON p.trial_id = tr.trial_id AND p.position = tr.position "
            "JOIN estimates e ON e.trial_id = tr.trial_id AND e.position = tr.position "
            "AND e.normalisation = tr.normalisation "
            "ORDER BY c.position, t.repetition, tr.ground_truth, e.estimator, p.position",
            self.connection)
        return _expand_factors(frame)

    def truths_frame(self):  # type: ignore[no-untyped-def]
        """Read one row per (trial, ground truth, checked point) with its parsed diagnostics.

        The ``diagnostics`` column contains each point's dictionary as the
        ground truth recorded it.
        """
        import pandas as pd

        frame = pd.read_sql_query(
            "SELECT tr.trial_id, t.condition_id, t.repetition, c.factors, tr.ground_truth, "
            "tr.position, tr.value AS truth, tr.diagnostics FROM truths tr "
            "JOIN trials t USING (trial_id) JOIN conditions c USING (condition_id) "
            "ORDER BY c.position, t.repetition, tr.ground_truth, tr.position", self.connection)
        frame["diagnostics"] = [json.loads(v) for v in frame["diagnostics"]]
        return _expand_factors(frame)

    def trials_frame(self):  # type: ignore[no-untyped-def]
        """Read one row per trial with its training summary and timings as columns."""
        import pandas as pd

        frame = pd.read_sql_query(
            "SELECT t.*, c.factors FROM trials t JOIN conditions c USING (condition_id) "
            "ORDER BY c.position, t.repetition", self.connection)
        training = pd.json_normalize([json.loads(v) for v in frame.pop("training")])
        training = training.drop(columns=["history_epochs", "history_loss"], errors="ignore")
        timings = pd.json_normalize([json.loads(v) for v in frame.pop("timings")])
        frame = pd.concat([frame, training.add_prefix("training."), timings.add_prefix("time.")],
                          axis=1)
        return _expand_factors(frame)


def _hashable(value: Any) -> Any:
    """Make a factor level usable as a table key: mappings and lists become compact JSON."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def _expand_factors(frame):  # type: ignore[no-untyped-def]
    import pandas as pd

    rows = [{name: _hashable(value) for name, value in json.loads(v).items()}
            for v in frame.pop("factors")]
    factors = pd.DataFrame(rows, index=frame.index)
    return pd.concat([factors, frame], axis=1)
