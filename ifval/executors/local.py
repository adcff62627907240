"""Executor ``local``: runs batches in this process or in a pool of worker processes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import ifval
from ifval.kinds import Executor

logger = logging.getLogger(__name__)


class LocalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workers: int = Field(
        1, ge=1, description="Worker processes; 1 runs batches in the calling process."
    )
    threads_per_worker: int | None = Field(
        None, ge=1, description="torch threads per worker; default: cores divided by workers."
    )


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class Local(Executor):
    name = "local"
    description = "Run batches here, or in a pool of worker processes on this machine."
    Params = LocalParams

    def runs_in_process(self, params: LocalParams) -> bool:  # type: ignore[override]
        return params.workers == 1

    def run(self, params: LocalParams, function: Callable[[Any], Any],  # type: ignore[override]
            tasks: Iterable[Any], on_result: Callable[[Any, Any], None]) -> None:
        tasks = list(tasks)
        if params.workers == 1:
            for task in tasks:
                on_result(task, function(task))
            return

        import multiprocessing
        import os
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        threads = params.threads_per_worker or max(1, (os.cpu_count() or 1) // params.workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(params.workers, mp_context=context, initializer=_set_threads,
                                 initargs=(threads,)) as pool:
            pending = {pool.submit(function, task): task for task in tasks}
            failure: BaseException | None = None
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    if future.cancelled():
                        continue
                    error = future.exception()
                    if error is not None:
                        logger.error("batch %s failed: %s", getattr(task, "key", task), error)
                        failure = failure or error
                        for other in pending:
                            other.cancel()
                        continue
                    on_result(task, future.result())
            if failure is not None:
                raise failure


@ifval.hookimpl
def ifval_executors() -> list[Executor]:
    return [Local()]
