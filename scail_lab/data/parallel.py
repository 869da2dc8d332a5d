"""Map a function over items in worker processes of one torch thread each (the data tools' and the toy stages'
way to use a small CPU's cores: two one-thread processes get more from two cores than one two-thread process when
the matrices are small)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence


def _one_thread_worker() -> None:
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def parallel_map(fn: Callable, items: Sequence, workers: int = 1) -> list:
    """[fn(item) for item in items]; with workers > 1, in that many worker processes of one torch thread each.
    `fn` and the items must pickle (module functions or functools.partial of them, not lambdas)."""
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork where the platform has it (as DataLoader workers do: one torch thread in the child); spawn re-imports
    # torch and the stack per pool, seconds each
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=context, initializer=_one_thread_worker) as pool:
        return list(pool.map(fn, items))
