"""A progress bar over all requests of all policies, shown only on runs of a few seconds."""

from __future__ import annotations

from tqdm import tqdm

from sim.config import LoadedScenario


class RunProgress:
    """Callable the engine reports to: a request index, or -1 at the end of a policy run."""

    def __init__(self, ld: LoadedScenario):
        sc = ld.scenario
        self.per_run = sc.requests or 0
        total = self.per_run * len(sc.policies) * sc.replications or None
        self.bar = tqdm(
            total=total, unit="req", delay=2.0, leave=False, dynamic_ncols=True, disable=None
        )
        self.done_runs = 0
        self.last = 0

    def __call__(self, index: int) -> None:
        if index < 0:
            self.done_runs += 1
            base = self.done_runs * self.per_run
            self.bar.update(max(base - self.bar.n, 0))
            self.last = 0
            return
        self.bar.update(max(index - self.last, 0))
        self.last = index

    def close(self) -> None:
        self.bar.close()
