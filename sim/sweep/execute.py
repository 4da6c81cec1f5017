"""Executors: run task dicts in this process, in local worker processes, or on Dask.

Whatever runs them, each task carries everything it needs (plain data, its own seed), so
the results are identical; `on_done` is called in this process as each task finishes.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from tqdm import tqdm

from sim import limits as lim
from sim.errors import UserError
from sim.sweep.tasks import run_task

OnDone = Callable[[dict, dict], None]

# Seconds to wait for a Dask scheduler to answer (`--dask-timeout-s`): default and bound.
DEFAULT_DASK_TIMEOUT_S = 10.0
# Dask's comm schemes; an address without one is tcp.
DASK_SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")
_HOST = r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])"
_HOST_PORT = re.compile(rf"{_HOST}(?::(?P<port>[0-9]{{1,5}}))?")
_INPROC = re.compile(r"[^\s/]+(?:/[^\s/]+)*")
_ADDRESS_FORMS = (
    "local, tcp://host:port, host:port, or another Dask scheme ("
    + ", ".join(f"{s}://" for s in DASK_SCHEMES[1:])
    + ")"
)


def check_dask_address(address: str) -> str:
    """The `--dask` address if its form is one Dask accepts, else a UserError.

    Checked before anything starts, so a typo fails in one line instead of a traceback
    from deep inside Dask.
    """
    if address == "local":
        return address
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    if scheme not in DASK_SCHEMES:
        raise UserError(
            f"--dask: unknown scheme '{scheme}://' in '{address}'; use {_ADDRESS_FORMS}"
        )
    pattern = _INPROC if scheme == "inproc" else _HOST_PORT
    match = pattern.fullmatch(rest)
    port = match.group("port") if match and scheme != "inproc" else None
    if match is None or (port is not None and not 1 <= int(port) <= 65535):
        raise UserError(f"--dask: '{address}' is not a scheduler address; use {_ADDRESS_FORMS}")
    return address


def check_dask_timeout(timeout_s: float) -> float:
    """`--dask-timeout-s` inside its range (limits.DASK_TIMEOUT_S), else a UserError."""
    try:
        return float(lim.DASK_TIMEOUT_S.parse(timeout_s))
    except ValueError as err:
        raise UserError(f"--dask-timeout-s: {err} (seconds)") from None


def check_dask_args(address: str | None, timeout_s: float) -> None:
    """Validate `--dask` and `--dask-timeout-s` together (the timeout even without --dask)."""
    check_dask_timeout(timeout_s)
    if address is not None:
        check_dask_address(address)


def probe_scheduler(address: str, timeout_s: float) -> None:
    """Ask the scheduler at `address` who it is, all within `timeout_s`, or a UserError.

    Dask's own `Client(address, timeout=...)` waits without end for a peer that accepts
    the connection and never answers; this probe bounds the whole exchange (connect,
    handshake, one `identity` call) and runs in its own event loop, which it closes.
    """
    try:
        from distributed.comm import connect
    except ImportError:
        raise UserError("--dask needs the dask extra: pip install 'splitsim[dask]'") from None

    async def identity() -> object:
        comm = await connect(address, timeout=timeout_s)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    try:
        reply = asyncio.run(asyncio.wait_for(identity(), timeout_s))
    except TimeoutError:
        raise UserError(
            f"--dask: no Dask scheduler answered at {address} within {timeout_s:g} s "
            "(--dask-timeout-s)"
        ) from None
    except (OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"--dask: cannot connect to the scheduler at {address} ({reason})"
        ) from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise UserError(f"--dask: {address} answered, but it is not a Dask scheduler")


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
    tasks: list[dict],
    address: str,
    jobs: int,
    on_done: OnDone,
    progress: bool = True,
    timeout_s: float = DEFAULT_DASK_TIMEOUT_S,
) -> None:
    """Run tasks on a Dask cluster (`local` starts a LocalCluster of `jobs` processes).

    A remote scheduler is probed first (`probe_scheduler`), so a wrong address fails
    within `timeout_s` seconds instead of hanging.
    """
    check_dask_args(address, timeout_s)
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
        probe_scheduler(address, timeout_s)
        try:
            client = Client(address, timeout=timeout_s)
        except OSError as err:
            raise UserError(
                f"--dask: cannot connect to the scheduler at {address} ({err})"
            ) from None
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
