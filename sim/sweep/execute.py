"""Executors: run task dicts in this process, in local worker processes, or on Dask.

Whatever runs them, each task carries everything it needs (plain data, its own seed), so
the results are identical; `on_done` is called in this process as each task finishes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from tqdm import tqdm

from sim.errors import UserError
from sim.sweep.tasks import run_task

OnDone = Callable[[dict, dict], None]


def default_jobs() -> int:
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = tqdm(total=total, unit="task", disable=not enabled or None, dynamic_ncols=True)

    def update(self, running: int) -> None:
        self.bar.set_postfix(running=running, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run_local(tasks: list[dict], jobs: int, on_done: OnDone, progress: bool = True) -> None:
    """Run tasks in `jobs` worker processes (in this process when jobs == 1)."""
    bar = _Progress(len(tasks), progress)
    try:
        if jobs <= 1:
            for i, task in enumerate(tasks):
                on_done(task, run_task(task))
                bar.update(1 if i + 1 < len(tasks) else 0)  # the next one starts now
            return
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            queue = list(reversed(tasks))
            running = {}
            while queue or running:
                while queue and len(running) < jobs:
                    task = queue.pop()
                    running[pool.submit(run_task, task)] = task
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    on_done(running.pop(fut), fut.result())
                    bar.update(len(running))
    finally:
        bar.close()


def run_dask(
    tasks: list[dict], address: str, jobs: int, on_done: OnDone, progress: bool = True
) -> None:
    """Run tasks on a Dask cluster (`local` starts a LocalCluster of `jobs` processes)."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise UserError("--dask needs the dask extra: pip install 'splitsim[dask]'") from None
    cluster = None
    if address == "local":
        cluster = LocalCluster(
            n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout=10)
        except OSError as err:
            raise UserError(f"--dask {address}: cannot connect to the scheduler ({err})") from None
    bar = _Progress(len(tasks), progress)
    try:
        slots = sum(client.nthreads().values()) or jobs
        futures = {client.submit(run_task, t, pure=False): t for t in tasks}
        remaining = len(futures)
        for fut in as_completed(futures):
            remaining -= 1
            on_done(futures[fut], fut.result())
            bar.update(min(remaining, slots))
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
