"""Measure one batch per condition at reduced epochs and project a protocol's full wall time.

Per-step cost does not depend on how many steps are taken, so a batch run
with training and retraining epochs divided by ``--scale``, its training and
retraining times multiplied back, gives the full-scale time of that batch.
The Hessian spectrum, the estimators, data loading and record keeping count
once, as they do not depend on the epochs. The projection assumes every
batch of a condition costs the same.

    python benchmarks/project_protocol.py protocols/iris_width.yaml --scale 10

Keep the scale modest: a run stores a fixed number of history points, so at
very few epochs that bookkeeping would be a larger share than at full scale.

A network trained for a fraction of its epochs may not reach a minimum, and
then ``exact`` rejects the indefinite Hessian. ``--damping`` raises every
estimator's damping to at least the given value in the measured run only;
the cost of an estimate does not depend on it.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import resource
import time
from pathlib import Path

import torch

from ifval.protocol import expand_conditions, load_protocol
from ifval.trial import BatchTask, repetition_seed, run_batch


def scaled_config(config: dict, scale: int, damping: float | None = None,
                  dtype: str | None = None) -> dict:
    config = copy.deepcopy(config)
    if dtype is not None:
        config["training"]["dtype"] = dtype
    config["training"]["epochs"] = max(1, config["training"]["epochs"] // scale)
    for truth in config["ground_truths"]:
        if "epochs" in truth:
            truth["epochs"] = max(1, truth["epochs"] // scale)
    if damping is not None:
        for estimator in config["estimators"]:
            estimator["damping"] = max(damping, estimator.get("damping", 0.0))
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol", type=Path)
    parser.add_argument("--scale", type=int, default=10, help="Epoch divisor of the measured run.")
    parser.add_argument("--only", default=None,
                        help="Measure only the conditions whose label contains this text.")
    parser.add_argument("--damping", type=float, default=None,
                        help="Raise every estimator's damping to at least this value.")
    parser.add_argument("--dtype", choices=["float64", "float32"], default=None,
                        help="Train and retrain in this type instead of the protocol's.")
    args = parser.parse_args()

    protocol = load_protocol(args.protocol)
    conditions = expand_conditions(protocol)
    if args.only is not None:
        conditions = [c for c in conditions if args.only in c.label]
    batch = min(protocol.batch_size, protocol.repetitions)
    batches_per_condition = math.ceil(protocol.repetitions / batch)
    seeds = tuple(repetition_seed(protocol.seed, r) for r in range(batch))
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"protocol {protocol.name}: {len(conditions)} conditions, {protocol.repetitions} "
          f"repetitions in batches of {batch}; measured at epochs / {args.scale}")
    header = ["train s", "truth s", "hessian s", "estim s", "full-scale s"]
    print(f"{'condition':45s} " + " ".join(f"{h:>12s}" for h in header))
    total = 0.0
    by_variant: dict[str, float] = {}
    for condition in conditions:
        config = scaled_config(condition.config, args.scale, args.damping, args.dtype)
        task = BatchTask(condition.id, config, tuple(range(batch)), seeds)
        started = time.perf_counter()
        timings = run_batch(task)[0]["timings"]
        elapsed = time.perf_counter() - started
        # Training and retraining scale with the epochs. The Hessian spectrum,
        # the estimators, data loading and record keeping do not.
        scaled = timings["training_s"] + timings["ground_truths_s"]
        full = (elapsed + (args.scale - 1) * scaled) * batches_per_condition
        total += full
        variant = str(condition.factors.get("variant", "all"))
        by_variant[variant] = by_variant.get(variant, 0.0) + full
        measured = [timings["training_s"], timings["ground_truths_s"], timings["hessian_s"],
                    timings["estimators_s"]]
        print(f"{condition.label:45s} " + " ".join(f"{v:12.2f}" for v in measured)
              + f" {full:12.0f}")
    if len(by_variant) > 1:
        for variant, seconds in by_variant.items():
            print(f"  {variant:20s} projected {seconds / 60:6.1f} min")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trials = len(conditions) * protocol.repetitions
    print(f"projected full-scale wall time: {total / 60:.1f} min for {trials} trials "
          f"({total / trials:.2f} s per trial); peak memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
