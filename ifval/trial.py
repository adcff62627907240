"""One batch of trials, step by step: data, training, points, ground truths, estimates, scores.

A batch is the repetitions of one condition trained side by side as stacked
models. Every repetition keeps its own seed and yields its own record, as if
it had run alone. The run store saves records one trial at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ifval.errors import IfvalError
from ifval.protocol import Points, ResolvedCondition, Training, resolve_condition

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchTask:
    """Unit of work an executor ships to a worker: a condition's configuration and repetitions."""

    condition_id: str
    config: dict[str, Any]
    repetitions: tuple[int, ...]
    seeds: tuple[int, ...]
    label: str = ""
    """The condition's factor levels, for messages."""

    @property
    def key(self) -> str:
        return f"{self.condition_id}[{self.repetitions[0]}..{self.repetitions[-1]}]"


def trial_id(condition_id: str, repetition: int) -> str:
    return f"{condition_id}-{repetition:04d}"


def repetition_seed(base_seed: int, repetition: int) -> int:
    """Seed of repetition ``repetition``; the same in every condition, so conditions are paired."""
    return int(np.random.SeedSequence([base_seed, repetition]).generate_state(1)[0])


StageProgress = Callable[[str, int, int], None]
"""Receives (stage, steps done, steps in the stage) while a batch runs."""


def run_batch(task: BatchTask, progress: StageProgress | None = None) -> list[dict[str, Any]]:
    """Run every repetition of ``task`` and return one record per trial."""
    import torch

    from ifval.allocator import tune_allocator

    tune_allocator()
    resolved = resolve_condition(task.config)
    started = time.perf_counter()
    dataset, dataset_params = resolved.dataset
    split = dataset.load(dataset_params)
    dtype = getattr(torch, resolved.training.dtype)
    loaded_at = time.perf_counter()

    batch, fit_result = _train(resolved, split, task.seeds, dtype, progress)
    fitted_at = time.perf_counter()
    spectra: list[dict[str, Any]] = [{} for _ in task.seeds]
    if resolved.hessian is not None:
        from ifval.spectrum import hessian_spectrum

        if progress is not None:
            progress("hessian spectrum", 0, 1)
        with _context(task, "hessian spectrum"):
            spectra = hessian_spectrum(batch, resolved.hessian)
    trained_at = time.perf_counter()
    train_losses = _per_sample_losses(batch)
    grouped = resolved.points.groups is not None
    if grouped and resolved.points.groups.kind == "most_influential":  # type: ignore[union-attr]
        with _context(task, "points.groups"):
            points = influential_groups(resolved, batch)
    elif grouped:
        points = select_groups(resolved.points, split.y_train, task.seeds)
    else:
        points = select_points(resolved.points, train_losses, task.seeds)

    truths, diagnostics, normalisations = {}, {}, {}
    for label, plugin, params in resolved.ground_truths:
        with _context(task, f"ground truth {label!r}"):
            if grouped:
                result = plugin.measure_groups(params, batch, points)
            else:
                result = plugin.measure(params, batch, points)
        truths[label] = result.values
        diagnostics[label] = result.diagnostics
        normalisations[label] = plugin.normalisation(params)
    truths_at = time.perf_counter()

    estimates: dict[tuple[str, str], np.ndarray] = {}
    for index, (label, plugin, params) in enumerate(resolved.estimators):
        if progress is not None:
            progress(f"estimator {label}", index, len(resolved.estimators))
        for normalisation in sorted(set(normalisations.values())):
            with _context(task, f"estimator {label!r}"):
                if grouped:
                    result = plugin.estimate_groups(params, batch, points, normalisation)
                else:
                    result = plugin.estimate(params, batch, points, normalisation)
            estimates[(label, normalisation)] = result.values
    estimated_at = time.perf_counter()

    timings = {
        "loading_s": loaded_at - started,
        "training_s": fitted_at - loaded_at,
        "hessian_s": trained_at - fitted_at,
        "ground_truths_s": truths_at - trained_at,
        "estimators_s": estimated_at - truths_at,
        "batch_size": len(task.seeds),
    }
    records = []
    for b, (repetition, seed) in enumerate(zip(task.repetitions, task.seeds, strict=True)):
        record = _record(task, resolved, split, batch, fit_result, b, repetition, seed,
                         points[b], train_losses[b], truths, diagnostics, normalisations,
                         estimates, timings)
        record["training"].update(spectra[b])
        records.append(record)
    return records


@contextmanager
def _context(task: BatchTask, what: str) -> Iterator[None]:
    """Prefix a user-facing error raised inside a plugin with the condition and the plugin."""
    try:
        yield
    except IfvalError as exc:
        where = f"condition {task.label}" if task.label else "the default condition"
        raise IfvalError(f"{where}, {what}: {exc}") from exc


def select_points(settings: Points, train_losses: np.ndarray, seeds: tuple[int, ...]) -> np.ndarray:
    """Training rows checked in each trial, an integer array ``(B, k)``."""
    size, n = train_losses.shape
    if settings.strategy == "all":
        return np.tile(np.arange(n), (size, 1))
    k = settings.k or n
    if k > n:
        msg = f"points.k: {k} points requested but the training set has only {n}; lower k"
        raise IfvalError(msg)
    if settings.strategy == "top_loss":
        # Stable sort on the negated loss: ties keep row order, so the choice is deterministic.
        return np.argsort(-train_losses, axis=1, kind="stable")[:, :k]
    rows = [np.random.default_rng([seed, 1]).choice(n, size=k, replace=False) for seed in seeds]
    return np.stack(rows)


def select_groups(settings: Points, y_train: np.ndarray, seeds: tuple[int, ...]) -> np.ndarray:
    """Groups of training rows checked in each trial, an integer array ``(B, k, m)``.

    Each group contains m distinct rows, and different groups may share rows.
    ``same_class`` groups take the classes in turn, group j drawing from the
    j-th class modulo the number of classes.
    """
    assert settings.groups is not None
    n = len(y_train)
    members = settings.groups.members(n)
    k = settings.k or 1
    classes = np.unique(y_train)
    by_class = {int(c): np.flatnonzero(y_train == c) for c in classes}
    if settings.groups.kind == "same_class":
        smallest = min(len(rows) for rows in by_class.values())
        if members > smallest:
            msg = (f"points.groups: same-class groups of {members} points need that many points "
                   f"in every class, but the smallest class has {smallest}; lower the size")
            raise IfvalError(msg)
    trials = []
    for seed in seeds:
        generator = np.random.default_rng([seed, 1])
        groups = []
        for j in range(k):
            pool = (by_class[int(classes[j % len(classes)])]
                    if settings.groups.kind == "same_class" else np.arange(n))
            groups.append(np.sort(generator.choice(pool, size=members, replace=False)))
        trials.append(np.stack(groups))
    return np.stack(trials)


def influential_groups(resolved: ResolvedCondition, batch) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Group the training points by the first estimator's ranking, an array ``(B, k, m)``.

    The first estimator estimates every training point, with the first
    ground truth's normalisation, and the points are ranked by the absolute
    estimate. Group j contains ranks j·m to (j + 1)·m − 1, and ties keep row
    order.
    """
    settings = resolved.points
    assert settings.groups is not None
    n = batch.n_train
    members = settings.groups.members(n)
    k = settings.k or 1
    if k * members > n:
        msg = (f"points.groups: {k} most-influential groups of {members} points need "
               f"{k * members} training points but there are {n}; lower k or the size")
        raise IfvalError(msg)
    label, estimator, params = resolved.estimators[0]
    _, truth, truth_params = resolved.ground_truths[0]
    every_point = np.tile(np.arange(n), (batch.size, 1))
    values = estimator.estimate(params, batch, every_point, truth.normalisation(truth_params))
    order = np.argsort(-np.abs(values.values), axis=1, kind="stable")
    logger.debug("most influential groups ranked by estimator %r", label)
    return order[:, : k * members].reshape(batch.size, k, members)


def _train(resolved: ResolvedCondition, split, seeds, dtype, progress):  # type: ignore[no-untyped-def]
    import torch

    from ifval.kinds import TrainedBatch
    from ifval.training.fit import FitSettings, epoch_reporter, fit

    model, model_params = resolved.model
    training: Training = resolved.training
    initial = [
        model.init(model_params, split.n_features, split.n_classes,
                   torch.Generator().manual_seed(seed))
        for seed in seeds
    ]
    weights = {name: torch.stack([w[name] for w in initial]).to(dtype) for name in initial[0]}
    x_train = torch.as_tensor(split.x_train, dtype=dtype)
    y_train = torch.as_tensor(split.y_train, dtype=torch.long)
    x_test = torch.as_tensor(split.x_test, dtype=dtype)
    y_test = torch.as_tensor(split.y_test, dtype=torch.long)
    decay = torch.full((len(seeds),), training.weight_decay, dtype=dtype)

    n = len(split.y_train)
    sample_weights = torch.full((len(seeds), n), 1.0 / n, dtype=dtype)
    data_term = model.objective(model_params, x_train, y_train, sample_weights)
    plateau = training.plateau
    settings = FitSettings(
        epochs=training.epochs, lr=training.lr, weight_decay=decay, betas=training.betas,
        eps=training.eps,
        plateau_factor=plateau.factor if plateau else None,
        plateau_patience=plateau.patience if plateau else 0,
        plateau_threshold=plateau.threshold if plateau else 0.0,
        plateau_min_lr=plateau.min_lr if plateau else 0.0,
        swa=training.swa,
    )
    result = fit(weights, data_term, settings,
                 on_epoch=epoch_reporter(progress, "training", training.epochs))
    batch = TrainedBatch(model, model_params, result.weights, x_train, y_train, x_test, y_test,
                         decay, list(seeds), progress, settings)
    return batch, result


def _per_sample_losses(batch) -> np.ndarray:  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        output = batch.model.forward(batch.model_params, batch.weights, batch.x_train)
        return batch.model.loss(batch.model_params, output, batch.y_train).numpy()


def _training_summary(batch, fit_result, b: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        single = {name: w[b : b + 1] for name, w in batch.weights.items()}
        train_out = batch.model.forward(batch.model_params, single, batch.x_train)
        test_out = batch.model.forward(batch.model_params, single, batch.x_test)
        test_loss = batch.model.loss(batch.model_params, test_out, batch.y_test).mean()
        predicted = batch.model.predict(batch.model_params, train_out)[0]
        accuracy = (predicted == batch.y_train).double().mean()
    return {
        "final_train_loss": float(fit_result.final_loss[b]),
        "train_accuracy": float(accuracy),
        "test_loss": float(test_loss),
        "final_lr": float(fit_result.final_lr[b]),
        "lr_reductions": int(fit_result.lr_reductions[b]),
        "swa_snapshots": fit_result.swa_snapshots,
        "history_epochs": list(fit_result.history_epochs),
        "history_loss": [float(loss[b]) for loss in fit_result.history_loss],
    }


def _record(task, resolved, split, batch, fit_result, b, repetition, seed, points, train_losses,  # type: ignore[no-untyped-def]
            truths, diagnostics, normalisations, estimates, timings) -> dict[str, Any]:
    scores = []
    for estimator_label, _, _ in resolved.estimators:
        for truth_label, values in truths.items():
            estimate = estimates[(estimator_label, normalisations[truth_label])][b]
            for scorer_label, scorer, scorer_params in resolved.scorers:
                score = scorer.score(scorer_params, estimate, values[b])
                scores.append({
                    "estimator": estimator_label,
                    "ground_truth": truth_label,
                    "scorer": scorer_label,
                    "value": score.value,
                    "reason": score.reason,
                })
    return {
        "trial_id": trial_id(task.condition_id, repetition),
        "condition_id": task.condition_id,
        "repetition": repetition,
        "seed": seed,
        "test_ids": split.test_ids.tolist(),
        "dataset_info": split.info,
        "points": [_checked(split, train_losses, rows) for rows in points],
        "estimates": [
            {"estimator": label, "normalisation": normalisation, "values": values[b].tolist()}
            for (label, normalisation), values in estimates.items()
        ],
        "truths": [
            {"ground_truth": label, "normalisation": normalisations[label],
             "values": values[b].tolist(), "diagnostics": diagnostics[label][b]}
            for label, values in truths.items()
        ],
        "scores": scores,
        "training": _training_summary(batch, fit_result, b),
        "timings": timings,
    }


def _checked(split, train_losses: np.ndarray, rows: np.ndarray | np.integer) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Describe one checked point, or one group (with its members), for the run store.

    A group has no single row: ``train_row`` and ``dataset_row`` are −1, its
    ``label`` is the members' class when they share one (else −1), and its
    ``training_loss`` is the members' mean.
    """
    if np.ndim(rows) == 0:
        row = int(rows)
        return {"train_row": row, "dataset_row": int(split.train_ids[row]),
                "label": int(split.y_train[row]), "training_loss": float(train_losses[row])}
    labels = {int(split.y_train[row]) for row in rows}
    return {"train_row": -1, "dataset_row": -1,
            "label": labels.pop() if len(labels) == 1 else -1,
            "training_loss": float(np.mean(train_losses[rows])),
            "members": [int(row) for row in rows],
            "dataset_members": [int(split.train_ids[row]) for row in rows]}
