"""Time ifval's batched trials against a one-model-at-a-time reference loop, in one process.

Both paths run the same condition of a protocol with the same seeds.

The reference loop is written the way published influence-function scripts
are. For each seed it builds the network from ``torch.nn.Linear`` layers,
initialised with the weights ``MLP.init`` draws for that seed, and trains it
on the full batch with ``torch.optim.Adam`` and, when the protocol sets a
plateau, ``ReduceLROnPlateau``. It then checks the k training points with the
largest loss. For each one it retrains the last layer without that point,
starting from the trained weights with a fresh Adam. The exact last-layer
influence estimates come from a Hessian built with
``torch.autograd.functional.hessian`` and solved with ``torch.linalg.solve``.

The batched path is :func:`ifval.trial.run_batch` with every seed in one
call. It trains the models as stacked tensors and steps all their
leave-one-out retrains together.

    python benchmarks/batched_vs_loop.py protocols/iris_quick.yaml --condition 0 --models 16
    python benchmarks/batched_vs_loop.py protocols/iris_quick.yaml --models 4 --scale 10

The output gives, per path, the wall time, the time per trial, the time of
each stage (training, ground truths, estimates) and the peak resident set
size (``ru_maxrss``), then the speed-up, which is the loop's wall time
divided by the batched path's. Both paths first run once on one model with
2 epochs, outside the timing, so that imports and caches do not count.

The agreement section compares the two paths model by model. On the checked
points both paths chose, it prints the largest absolute difference of the
truths and of the estimates. It also prints whether the checked points are
the same and the Spearman correlation of estimate against truth on each
side. Both paths compute in float64 (unless the protocol trains in float32)
but sum in a different order, so the values differ by rounding. Adam
divides by √v, which magnifies rounding differences over thousands of steps
for some models. Measured with 4 models on ``protocols/iris_quick.yaml``
(x86-64, torch 2.14.1): on condition 0 the differences were at most 3e-15
with ``--scale 10``, and at full scale 1e-13 for three models and 1.5e-8
for the fourth. On condition 2 (weight decay) at full scale the truths
differed by up to 1.3e-6 and the estimates by up to 5e-8.

``--scale`` divides only the epoch counts. The plateau patience stays in
epochs, so a scaled run cuts the learning rate relatively later.

Only what the loop implements is accepted: model ``mlp`` without SWA,
points ``top_loss`` without groups, one ground truth ``retrain_from_optimum``
with ``layers: last`` on the full batch without a plateau, early stopping or
the ``retrained`` baseline, and one estimator ``exact`` with scope
``last_layer``. Any other setting exits with a message naming it. The
protocol's Hessian spectrum is left out of the batched path because the loop
does not compute it.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from ifval.errors import IfvalError
from ifval.protocol import ResolvedCondition, expand_conditions, load_protocol, resolve_condition
from ifval.trial import BatchTask, repetition_seed, run_batch

WARM_UP_EPOCHS = 2
STAGES = ("training_s", "ground_truths_s", "estimators_s")
"""Stage timings, named as in the ``timings`` of a ``run_batch`` record."""
ACTIVATIONS = {"selu": torch.nn.SELU, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}


class UnsupportedSetting(SystemExit):
    """Exit with a message naming a protocol setting the reference loop does not implement."""

    def __init__(self, path: str, value: Any, supported: str) -> None:
        super().__init__(f"unsupported setting for the reference loop: {path} is {value!r}; "
                         f"the loop implements only {supported}")


def check_supported(resolved: ResolvedCondition) -> None:
    """Raise ``UnsupportedSetting`` for the first setting the reference loop does not implement."""
    model, _ = resolved.model
    if model.name != "mlp":
        raise UnsupportedSetting("model.name", model.name, "model 'mlp'")
    if resolved.training.swa is not None:
        raise UnsupportedSetting("training.swa", resolved.training.swa.model_dump(),
                                 "training without SWA (training.swa: null)")
    if resolved.points.groups is not None:
        raise UnsupportedSetting("points.groups", resolved.points.groups.model_dump(),
                                 "single points (points.groups: null)")
    if resolved.points.strategy != "top_loss":
        raise UnsupportedSetting("points.strategy", resolved.points.strategy,
                                 "points.strategy 'top_loss'")

    truths = [plugin.name for _, plugin, _ in resolved.ground_truths]
    if truths != ["retrain_from_optimum"]:
        raise UnsupportedSetting("ground_truths", truths, "one ground truth, retrain_from_optimum")
    _, _, truth = resolved.ground_truths[0]
    required = {"layers": "last", "batch_size": None, "plateau": None, "grad_tol": None,
                "patience": None, "baseline": "optimum"}
    for name, expected in required.items():
        value = getattr(truth, name)
        if value != expected:
            raise UnsupportedSetting(f"ground_truths[0].{name}", value,
                                     f"{name}: {'null' if expected is None else expected}")

    estimators = [plugin.name for _, plugin, _ in resolved.estimators]
    if estimators != ["exact"]:
        raise UnsupportedSetting("estimators", estimators, "one estimator, exact")
    _, _, estimator = resolved.estimators[0]
    if estimator.scope != "last_layer":
        raise UnsupportedSetting("estimators[0].scope", estimator.scope, "scope: last_layer")


def scaled_config(config: dict[str, Any], resolved: ResolvedCondition,
                  scale: float) -> dict[str, Any]:
    """Copy ``config`` with the training and retraining epochs divided by ``scale``.

    The epochs are read from ``resolved``, so a ground truth's default epoch
    count is scaled too. The Hessian spectrum is removed, because the
    reference loop does not compute it.
    """
    scaled = copy.deepcopy(config)
    scaled["hessian"] = None
    scaled["training"]["epochs"] = max(1, round(resolved.training.epochs / scale))
    for spec, (_, _, params) in zip(scaled["ground_truths"], resolved.ground_truths,
                                    strict=True):
        spec["epochs"] = max(1, round(params.epochs / scale))
    return scaled


def warm_up_config(config: dict[str, Any]) -> dict[str, Any]:
    """Copy ``config`` with every epoch count set to ``WARM_UP_EPOCHS``."""
    short = copy.deepcopy(config)
    short["training"]["epochs"] = WARM_UP_EPOCHS
    for truth in short["ground_truths"]:
        truth["epochs"] = WARM_UP_EPOCHS
    return short


# ------------------------------------------------------------------ reference loop


@dataclass
class ReferenceTrial:
    """Checked rows, truths and estimates of one model from the reference loop."""

    rows: np.ndarray
    truths: np.ndarray
    estimates: np.ndarray


def build_network(initial: dict[str, torch.Tensor], depth: int, activation: str,
                  dtype: torch.dtype, device: str) -> torch.nn.Sequential:
    """Build ``torch.nn.Linear`` layers holding ifval's input-major initial weights, transposed."""
    names = [f"layers.{i}" for i in range(depth)] + ["out"]
    modules: list[torch.nn.Module] = []
    for name in names:
        weight = initial[f"{name}.weight"]
        linear = torch.nn.Linear(weight.shape[0], weight.shape[1], dtype=dtype, device=device)
        with torch.no_grad():
            linear.weight.copy_(weight.T)
            linear.bias.copy_(initial[f"{name}.bias"])
        modules.append(linear)
        if name != "out":
            modules.append(ACTIVATIONS[activation]())
    return torch.nn.Sequential(*modules)


def train_network(network: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                  resolved: ResolvedCondition) -> None:
    """Train on the full batch with Adam, stepping ReduceLROnPlateau on each epoch's loss."""
    training = resolved.training
    optimizer = torch.optim.Adam(network.parameters(), lr=training.lr, betas=training.betas,
                                 eps=training.eps, weight_decay=training.weight_decay)
    scheduler = None
    if training.plateau is not None:
        plateau = training.plateau
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=plateau.factor, patience=plateau.patience,
            threshold=plateau.threshold, min_lr=plateau.min_lr)
    for _ in range(training.epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(network(x), y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step(loss.item())


def top_loss_rows(network: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                  k: int) -> np.ndarray:
    """Return the k rows with the largest training loss, ties in row order (as ifval does)."""
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(network(x), y, reduction="none")
    return np.argsort(-losses.cpu().numpy(), kind="stable")[:k]


def retrain_without(head: torch.nn.Linear, feats: torch.Tensor, y: torch.Tensor,
                    row: int, denominator: float, epochs: int, lr: float,
                    weight_decay: float) -> torch.nn.Linear:
    """Fine-tune a copy of ``head`` on the fixed features without training row ``row``.

    The data term is the sum of the kept points' losses divided by ``denominator``.
    """
    head = copy.deepcopy(head)
    keep = torch.ones(len(y), dtype=torch.bool, device=y.device)
    keep[row] = False
    feats_kept, y_kept = feats[keep], y[keep]
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(feats_kept), y_kept,
                                                 reduction="sum") / denominator
        loss.backward()
        optimizer.step()
    return head


def exact_estimates(network: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                    x_test: torch.Tensor, y_test: torch.Tensor, rows: np.ndarray,
                    resolved: ResolvedCondition, normalisation: str) -> np.ndarray:
    """Return the first-order last-layer removal estimate of each row, in float64.

    Δ̂_i = (1/n) g_iᵀ (H + λI)⁻¹ g_test for ``original_n``, and
    (1/(n − 1)) (g_i + w θ̂)ᵀ (H + λI)⁻¹ g_test for ``remaining``, where H is
    the Hessian of the mean training loss plus w I over the last layer's
    weight and bias.
    """
    _, _, estimator = resolved.estimators[0]
    decay = resolved.training.weight_decay
    network = copy.deepcopy(network).to(torch.float64)
    with torch.no_grad():
        feats = network[:-1](x.to(torch.float64))
        feats_test = network[:-1](x_test.to(torch.float64))
    head = network[-1]
    classes, hidden = head.weight.shape
    theta = torch.cat([head.weight.detach().reshape(-1), head.bias.detach()])

    def loss_at(flat: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = flat[: classes * hidden].reshape(classes, hidden)
        bias = flat[classes * hidden :]
        return torch.nn.functional.cross_entropy(
            torch.nn.functional.linear(inputs, weight, bias), labels)

    hessian = torch.autograd.functional.hessian(lambda t: loss_at(t, feats, y), theta)
    identity = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)
    system = hessian + (decay + estimator.damping) * identity
    eigenvalues = torch.linalg.eigvalsh(system)
    if eigenvalues[0] <= estimator.rtol * eigenvalues[-1].abs():
        raise SystemExit(f"reference loop: H + λI is not positive definite because its smallest "
                         f"eigenvalue is {float(eigenvalues[0]):.3e}. Raise the estimator's "
                         f"damping (now {estimator.damping:g}).")

    variable = theta.clone().requires_grad_(True)
    test_grad, = torch.autograd.grad(loss_at(variable, feats_test, y_test), variable)
    solved = torch.linalg.solve(system, test_grad)
    n = len(y)
    values = []
    for row in rows:
        point_grad, = torch.autograd.grad(loss_at(variable, feats[row : row + 1],
                                                  y[row : row + 1]), variable)
        if normalisation == "original_n":
            values.append(float(point_grad @ solved) / n)
        else:
            values.append(float((point_grad + decay * theta) @ solved) / (n - 1))
    return np.array(values)


def run_reference(config: dict[str, Any], seeds: tuple[int, ...], device: str,
                  times: dict[str, float]) -> list[ReferenceTrial]:
    """Run every seed one model at a time, adding the seconds of each of ``STAGES`` to ``times``."""
    resolved = resolve_condition(config)
    model, model_params = resolved.model
    dataset, dataset_params = resolved.dataset
    split = dataset.load(dataset_params)
    dtype = getattr(torch, resolved.training.dtype)
    x = torch.as_tensor(split.x_train, dtype=dtype, device=device)
    y = torch.as_tensor(split.y_train, dtype=torch.long, device=device)
    x_test = torch.as_tensor(split.x_test, dtype=dtype, device=device)
    y_test = torch.as_tensor(split.y_test, dtype=torch.long, device=device)
    n = len(y)
    k = resolved.points.k or n
    if k > n:
        raise SystemExit(f"points.k: {k} points requested but the training set has only {n}; "
                         f"lower k")
    _, _, truth = resolved.ground_truths[0]
    denominator = float(n if truth.normalisation == "original_n" else n - 1)

    trials = []
    for seed in seeds:
        started = time.perf_counter()
        initial = model.init(model_params, split.n_features, split.n_classes,
                             torch.Generator().manual_seed(seed))
        network = build_network(initial, model_params.depth, model_params.activation, dtype,
                                device)
        train_network(network, x, y, resolved)
        rows = top_loss_rows(network, x, y, k)
        trained_at = time.perf_counter()

        with torch.no_grad():
            feats = network[:-1](x)
            feats_test = network[:-1](x_test)
            base = torch.nn.functional.cross_entropy(network[-1](feats_test), y_test)
        truths = []
        for row in rows:
            head = retrain_without(network[-1], feats, y, int(row), denominator, truth.epochs,
                                   truth.lr, resolved.training.weight_decay)
            with torch.no_grad():
                test_loss = torch.nn.functional.cross_entropy(head(feats_test), y_test)
            truths.append(float(test_loss - base))
        truths_at = time.perf_counter()

        estimates = exact_estimates(network, x, y, x_test, y_test, rows, resolved,
                                    truth.normalisation)
        estimated_at = time.perf_counter()
        times["training_s"] += trained_at - started
        times["ground_truths_s"] += truths_at - trained_at
        times["estimators_s"] += estimated_at - truths_at
        trials.append(ReferenceTrial(rows, np.array(truths), estimates))
    return trials


# ---------------------------------------------------------------------- comparison


def peak_memory_mib() -> float:
    """Return the process's peak resident set size in MiB (ru_maxrss is bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def spearman(estimates: np.ndarray, truths: np.ndarray) -> float:
    if np.ptp(estimates) == 0 or np.ptp(truths) == 0:
        return float("nan")
    return float(spearmanr(estimates, truths).statistic)


def compare_model(reference: ReferenceTrial, record: dict[str, Any]) -> dict[str, Any]:
    """Compare one model's loop results with its ``run_batch`` record, on shared checked rows."""
    rows = np.array([point["train_row"] for point in record["points"]])
    truths = np.array(record["truths"][0]["values"])
    estimates = np.array(record["estimates"][0]["values"])
    shared, in_reference, in_batched = np.intersect1d(reference.rows, rows, return_indices=True)
    truth_gap = np.abs(reference.truths[in_reference] - truths[in_batched])
    estimate_gap = np.abs(reference.estimates[in_reference] - estimates[in_batched])
    return {
        "same_points": bool(np.array_equal(reference.rows, rows)),
        "shared_points": len(shared),
        "truth_difference": float(truth_gap.max()) if len(shared) else float("nan"),
        "estimate_difference": float(estimate_gap.max()) if len(shared) else float("nan"),
        "truth_scale": float(np.abs(truths).max()),
        "spearman_loop": spearman(reference.estimates, reference.truths),
        "spearman_batched": spearman(estimates, truths),
    }


def print_agreement(seeds: tuple[int, ...], comparisons: list[dict[str, Any]]) -> None:
    print("\nagreement per model (differences over the checked points both paths chose):")
    print(f"{'seed':>11} {'same points':>11} {'max |Δ truth|':>14} {'max |truth|':>12} "
          f"{'max |Δ estimate|':>17} {'Spearman loop':>14} {'Spearman batched':>17}")
    for seed, row in zip(seeds, comparisons, strict=True):
        points = "yes" if row["same_points"] else f"no ({row['shared_points']} shared)"
        print(f"{seed:>11} {points:>11} {row['truth_difference']:>14.2e} "
              f"{row['truth_scale']:>12.2e} {row['estimate_difference']:>17.2e} "
              f"{row['spearman_loop']:>14.4f} {row['spearman_batched']:>17.4f}")

    def summary(key: str, form: str) -> str:
        values = np.array([row[key] for row in comparisons])
        return f"median {np.nanmedian(values):{form}}, max {np.nanmax(values):{form}}"

    same = sum(row["same_points"] for row in comparisons)
    rho_gap = [abs(row["spearman_loop"] - row["spearman_batched"]) for row in comparisons]
    print(f"max |Δ truth| per model:    {summary('truth_difference', '.2e')}")
    print(f"max |Δ estimate| per model: {summary('estimate_difference', '.2e')}")
    print(f"same checked points: {same} of {len(comparisons)} models")
    print(f"Spearman(estimate, truth), loop:    {summary('spearman_loop', '.4f')}")
    print(f"Spearman(estimate, truth), batched: {summary('spearman_batched', '.4f')}")
    print(f"|Δ Spearman| per model: median {np.nanmedian(rho_gap):.2e}, "
          f"max {np.nanmax(rho_gap):.2e}")


def print_timing(name: str, seconds: float, models: int, stages: dict[str, float],
                 peak: float) -> None:
    parts = ", ".join(f"{stage.removesuffix('_s').replace('_', ' ')} {value:.2f} s"
                      for stage, value in stages.items())
    print(f"{name}: {seconds:8.2f} s, {seconds / models:7.3f} s per trial ({parts}); "
          f"peak RSS so far {peak:.0f} MiB")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol", type=Path, help="Protocol YAML file.")
    parser.add_argument("--condition", type=int, default=0,
                        help="Index of the condition in the protocol's expansion (default 0).")
    parser.add_argument("--models", type=int, default=16,
                        help="Repetitions (models) to run on each path (default 16).")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="Divide the training and retraining epochs by this on both paths, "
                        "for a quicker measurement; the plateau patience is not scaled "
                        "(default 1).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="Device of the computation (default cpu).")
    args = parser.parse_args()
    if args.models < 1:
        parser.error(f"--models must be at least 1, got {args.models}")
    if args.scale <= 0:
        parser.error(f"--scale must be positive, got {args.scale}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: torch.cuda.is_available() is False on this machine; "
                         "use --device cpu")
        parser.error("--device cuda: ifval's batched path (run_batch) runs on the CPU only, "
                     "so both paths must run there; use --device cpu")
    return args


def main() -> None:
    # torch 2.14's torch.func.hessian, which ifval's exact estimator calls,
    # scripts a decomposition internally and warns that scripting is deprecated.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated",
                            category=FutureWarning)
    args = parse_arguments()
    protocol = load_protocol(args.protocol)
    conditions = expand_conditions(protocol)
    if not 0 <= args.condition < len(conditions):
        raise SystemExit(f"--condition {args.condition} is out of range; {args.protocol} has "
                         f"conditions 0 to {len(conditions) - 1}")
    condition = conditions[args.condition]
    unscaled = resolve_condition(condition.config)
    check_supported(unscaled)
    config = scaled_config(condition.config, unscaled, args.scale)
    resolved = resolve_condition(config)
    repetitions = tuple(range(args.models))
    seeds = tuple(repetition_seed(protocol.seed, r) for r in repetitions)
    _, _, truth = resolved.ground_truths[0]

    # Other processes on the machine can slow both paths several times over,
    # so the load average is printed with the timings.
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, device {args.device}")
    checked = resolved.points.k or "all"
    print(f"condition {args.condition}: {condition.label}; {args.models} models; "
          f"{resolved.training.epochs} training epochs, {checked} checked points, "
          f"{truth.epochs} retraining epochs (epochs divided by {args.scale:g})")

    short = warm_up_config(config)
    run_reference(short, seeds[:1], args.device, dict.fromkeys(STAGES, 0.0))
    run_batch(BatchTask(condition.id, short, (0,), seeds[:1]))
    print(f"peak RSS after the warm-up: {peak_memory_mib():.0f} MiB")

    loop_times = dict.fromkeys(STAGES, 0.0)
    started = time.perf_counter()
    reference = run_reference(config, seeds, args.device, loop_times)
    loop_seconds = time.perf_counter() - started
    print_timing("reference loop", loop_seconds, args.models, loop_times, peak_memory_mib())

    started = time.perf_counter()
    try:
        records = run_batch(BatchTask(condition.id, config, repetitions, seeds))
    except IfvalError as exc:
        raise SystemExit(f"ifval's batched path failed: {exc}") from exc
    batch_seconds = time.perf_counter() - started
    timings = records[0]["timings"]
    print_timing("batched path  ", batch_seconds, args.models,
                 {stage: timings[stage] for stage in STAGES}, peak_memory_mib())
    # NOTE: ru_maxrss never decreases, so the batched path's reading is the
    # peak of both paths. It is the batched path's own peak only when that
    # is higher than the loop's.
    print(f"speed-up (loop time / batched time): {loop_seconds / batch_seconds:.1f}x")

    print_agreement(seeds, [compare_model(trial, record)
                            for trial, record in zip(reference, records, strict=True)])


if __name__ == "__main__":
    main()
