"""Measure one batch per condition at reduced epochs and project a protocol's full wall time.

Per-step cost does not depend on how many steps are taken, so a batch run
with training and retraining epochs divided by ``--scale`` and its phase
times multiplied back gives the full-scale time of that batch. The
projection assumes every batch of a condition costs the same.

    python benchmarks/project_protocol.py protocols/iris_width.yaml --scale 10

Keep the scale modest: a run stores a fixed number of history points, so at
very few epochs that bookkeeping would be a larger share than at full scale.
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


def scaled_config(config: dict, scale: int) -> dict:
    config = copy.deepcopy(config)
    config["training"]["epochs"] = max(1, config["training"]["epochs"] // scale)
    for truth in config["ground_truths"]:
        if "epochs" in truth:
            truth["epochs"] = max(1, truth["epochs"] // scale)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol", type=Path)
    parser.add_argument("--scale", type=int, default=10, help="Epoch divisor of the measured run.")
    args = parser.parse_args()

    protocol = load_protocol(args.protocol)
    conditions = expand_conditions(protocol)
    batch = min(protocol.batch_size, protocol.repetitions)
    batches_per_condition = math.ceil(protocol.repetitions / batch)
    seeds = tuple(repetition_seed(protocol.seed, r) for r in range(batch))
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"protocol {protocol.name}: {len(conditions)} conditions, {protocol.repetitions} "
          f"repetitions in batches of {batch}; measured at epochs / {args.scale}")
    header = ["train s", "truth s", "estim s", "full-scale s"]
    print(f"{'condition':45s} " + " ".join(f"{h:>12s}" for h in header))
    total = 0.0
    for condition in conditions:
        task = BatchTask(condition.id, scaled_config(condition.config, args.scale),
                         tuple(range(batch)), seeds)
        started = time.perf_counter()
        timings = run_batch(task)[0]["timings"]
        elapsed = time.perf_counter() - started
        phases = timings["training_s"] + timings["ground_truths_s"] + timings["estimators_s"]
        other = elapsed - phases
        full = (args.scale * (timings["training_s"] + timings["ground_truths_s"])
                + timings["estimators_s"] + other) * batches_per_condition
        total += full
        measured = [timings["training_s"], timings["ground_truths_s"], timings["estimators_s"]]
        print(f"{condition.label:45s} " + " ".join(f"{v:12.2f}" for v in measured)
              + f" {full:12.0f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trials = len(conditions) * protocol.repetitions
    print(f"projected full-scale wall time: {total / 60:.1f} min for {trials} trials "
          f"({total / trials:.2f} s per trial); peak memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
