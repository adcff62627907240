"""Protocol → conditions → batches of trials → executor → run store."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ifval.errors import IfvalError
from ifval.plugins import default_catalog
from ifval.protocol import (
    Condition,
    Protocol,
    ResolvedCondition,
    expand_conditions,
    resolve_condition,
)
from ifval.store import RunStore
from ifval.trial import BatchTask, repetition_seed, run_batch, trial_id

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called with (trials stored, trials in the protocol) after each stored trial."""

StageCallback = Callable[[str, int, str, int, int], None]
"""Called with (batch key, trials in the batch, stage, steps done, steps in the stage)."""


@dataclass
class RunSummary:
    run_dir: Path
    total: int
    already_stored: int
    computed: int


def plan_batches(protocol: Protocol, conditions: list[Condition],
                 finished: set[str]) -> list[BatchTask]:
    """Batches holding at least one unfinished trial.

    Repetitions are cut into fixed chunks of ``batch_size`` and a chunk is
    always run whole, so a trial is computed in the same batch on a first run
    and on a resumed one. The store keeps the first copy of a trial.
    """
    tasks = []
    size = protocol.batch_size
    for condition in conditions:
        for start in range(0, protocol.repetitions, size):
            repetitions = tuple(range(start, min(start + size, protocol.repetitions)))
            if all(trial_id(condition.id, r) in finished for r in repetitions):
                continue
            seeds = tuple(repetition_seed(protocol.seed, r) for r in repetitions)
            tasks.append(BatchTask(condition.id, condition.config, repetitions, seeds,
                                   condition.label))
    return tasks


def _run_reporting(task: BatchTask, report: StageCallback) -> list[dict]:
    size = len(task.repetitions)
    return run_batch(task, lambda stage, done, total: report(task.key, size, stage, done, total))


def check_conditions(conditions: list[Condition]) -> None:
    """Load each condition's dataset and check what only the data can tell, before training."""
    sizes: dict[str, int] = {}
    for condition in conditions:
        resolved = resolve_condition(condition.config)
        dataset, dataset_params = resolved.dataset
        key = repr(condition.config["dataset"])
        if key not in sizes:
            sizes[key] = len(dataset.load(dataset_params).y_train)
        points = resolved.points
        where = f"condition {condition.label or 'default'}"
        if points.groups is not None:
            _check_groups(resolved, sizes[key], where)
            continue
        if points.strategy != "all" and points.k is not None and points.k > sizes[key]:
            msg = (f"points.k: {points.k} points requested but dataset "
                   f"{condition.config['dataset']['name']!r} has {sizes[key]} training points "
                   f"(condition {condition.label or 'default'}); lower k or use strategy 'all'")
            raise IfvalError(msg)


def _check_groups(resolved: ResolvedCondition, n: int, where: str) -> None:
    """Check that groups fit the training set and that every plugin can handle them."""
    assert resolved.points.groups is not None
    members = resolved.points.groups.members(n)
    if members >= n:
        msg = (f"points.groups.size: groups of {members} points leave nothing to train on "
               f"with {n} training points ({where}); choose a smaller size")
        raise IfvalError(msg)
    for kind, listed, method in (("estimator", resolved.estimators, "estimate_groups"),
                                 ("ground truth", resolved.ground_truths, "measure_groups")):
        for label, plugin, _ in listed:
            if not getattr(plugin, "supports_groups", False):
                msg = (f"points.groups: {kind} {label!r} does not support groups (it has no "
                       f"`{method}`); remove it, or leave out `points.groups` to check "
                       "single points")
                raise IfvalError(msg)


def run_protocol(
    protocol: Protocol,
    protocol_text: str = "",
    output: str | Path | None = None,
    progress: ProgressCallback | None = None,
    stage_progress: StageCallback | None = None,
) -> RunSummary:
    """Run every trial of ``protocol`` not yet in the run store, storing each as it finishes."""
    run_dir = Path(output) if output is not None else protocol.output_dir
    conditions = expand_conditions(protocol)
    check_conditions(conditions)
    total = len(conditions) * protocol.repetitions
    executor_spec = protocol.executor
    executor = default_catalog().get("executor", executor_spec.name)
    executor_params = executor.parse_params(executor_spec.settings)

    with RunStore(run_dir, create=True) as store:
        store.bind_protocol(protocol.model_dump(mode="json"), protocol_text)
        store.add_conditions(conditions)
        finished = store.finished_trials()
        expected = {trial_id(c.id, r) for c in conditions for r in range(protocol.repetitions)}
        stored = len(finished & expected)
        tasks = plan_batches(protocol, conditions, finished)
        logger.info("run %s: %d trials, %d already stored, %d batches to run",
                    run_dir, total, stored, len(tasks))
        if progress is not None:
            progress(stored, total)
        computed = 0

        def on_result(task: BatchTask, records: list[dict]) -> None:
            nonlocal stored, computed
            for record in records:
                if record["trial_id"] in finished:
                    continue
                store.write_trial(record)
                finished.add(record["trial_id"])
                stored += 1
                computed += 1
                if progress is not None:
                    progress(stored, total)
            logger.info("batch %s stored (%d of %d trials)", task.key, stored, total)

        function: Callable[[BatchTask], list[dict]] = run_batch
        if stage_progress is not None and executor.runs_in_process(executor_params):
            function = partial(_run_reporting, report=stage_progress)
        executor.run(executor_params, function, tasks, on_result)
    return RunSummary(run_dir, total, total - computed, computed)
