"""Time the same trials run one model at a time and as one stacked batch, in one process.

Both paths call :func:`ifval.trial.run_batch` on the same condition and
seeds: the loop passes one seed per call, the batched path all of them at
once. In the loop each model's leave-one-out retrains are still stacked with
each other, so the ratio understates the gain over scripts that also retrain
point by point.

    python benchmarks/batched_vs_loop.py protocols/iris_quick.yaml --condition 1 --models 16
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from ifval.protocol import expand_conditions, load_protocol
from ifval.trial import BatchTask, repetition_seed, run_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol", type=Path)
    parser.add_argument("--condition", type=int, default=0, help="Index of the condition.")
    parser.add_argument("--models", type=int, default=16, help="Repetitions to run.")
    args = parser.parse_args()

    protocol = load_protocol(args.protocol)
    condition = expand_conditions(protocol)[args.condition]
    repetitions = tuple(range(args.models))
    seeds = tuple(repetition_seed(protocol.seed, r) for r in repetitions)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")
    print(f"condition: {condition.label}; {args.models} models; training "
          f"{condition.config['training']['epochs']} epochs")

    run_batch(BatchTask(condition.id, condition.config, (0,), seeds[:1]))  # warm-up
    started = time.perf_counter()
    looped = [run_batch(BatchTask(condition.id, condition.config, (r,), (s,)))[0]
              for r, s in zip(repetitions, seeds, strict=True)]
    loop_seconds = time.perf_counter() - started

    started = time.perf_counter()
    batched = run_batch(BatchTask(condition.id, condition.config, repetitions, seeds))
    batch_seconds = time.perf_counter() - started

    # Estimates and truths per model, not scores: a rank-based or top-k score
    # can flip on a near-tie from a rounding difference of 1e-12.
    differences = np.array([
        max(float(np.abs(np.subtract(a["values"], b["values"])).max())
            for key in ("estimates", "truths")
            for a, b in zip(one[key], many[key], strict=True))
        for one, many in zip(looped, batched, strict=True)
    ])
    other_points = sum(
        [p["train_row"] for p in one["points"]] != [p["train_row"] for p in many["points"]]
        for one, many in zip(looped, batched, strict=True)
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"one at a time: {loop_seconds:8.2f} s, {loop_seconds / args.models:7.3f} s per trial")
    print(f"stacked batch: {batch_seconds:8.2f} s, {batch_seconds / args.models:7.3f} s per trial")
    print(f"speed-up: {loop_seconds / batch_seconds:.1f}x; peak memory {peak:.0f} MiB")
    print(f"largest difference of an estimate or truth per model: median "
          f"{np.median(differences):.1e}, max {differences.max():.1e}; models above 1e-6: "
          f"{int((differences > 1e-6).sum())}; models whose checked points differ: "
          f"{other_points}")


if __name__ == "__main__":
    main()
