"""`run_scenario()`: the one place that builds environments, runs them and writes results."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import sim
from sim.config import LoadedScenario, effective_dict
from sim.engine.fleet import FleetBooks, FleetSimulation
from sim.engine.load import exact_mean_server_only_s
from sim.engine.planner import ProblemBook
from sim.engine.recorder import RunResult
from sim.engine.registry import engine_for
from sim.engine.token_fleet import TokenFleetSimulation
from sim.engine.workload import (
    Streams,
    generate_arrivals,
    offered_rate,
    replication_seeds,
    server_capacity_per_s,
)
from sim.errors import UserError
from sim.output import KIND_RUN, PendingResult, failure_error, os_error_line
from sim.records import (
    FLEET_AFTER,
    FLEET_REQUEST_COLUMN,
    REQUEST_COLUMNS,
    SERVER_COLUMNS,
    SERVER_TIMESERIES_COLUMNS,
    STATUS_COMPLETED,
    STATUS_REJECTED,
    SUMMARY_COLUMNS,
    TIMESERIES_COLUMNS,
    RequestStatus,
    status_labels,
)
from sim.summary import TOKEN_SUMMARY_KEYS, summarize, token_summary


@dataclass
class ScenarioResult:
    """Everything one scenario run produced, as DataFrames plus the manifest."""

    requests: pd.DataFrame
    summary: pd.DataFrame
    timeseries: pd.DataFrame
    effective: dict
    manifest: dict = field(default_factory=dict)
    servers: pd.DataFrame | None = None  # a fleet: one row per policy, replication, server
    server_timeseries: pd.DataFrame | None = None  # a fleet: server state per server


def scenario_hash(effective: dict) -> str:
    """Content hash of the effective scenario (stable across runs and machines)."""
    text = json.dumps(effective, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _frame(ld: LoadedScenario, res: RunResult, replication: int) -> pd.DataFrame:
    sc, arr = ld.scenario, res.arrivals
    mix, groups = sc.workload.mix, sc.clients
    status = status_labels(res.status)
    completed = res.status == RequestStatus.COMPLETED
    latency = res.finish_s - arr.time_s
    n = len(arr)
    nan = np.full(n, np.nan)
    tok = res.token
    ttft_dl = np.array([c.ttft_deadline_s or np.nan for c in mix], float)[arr.klass]
    tpot_dl = np.array([c.tpot_deadline_s or np.nan for c in mix], float)[arr.klass]
    sla_met = completed & (latency <= res.deadline_s)
    if tok is not None:  # every SLA the class gives must hold
        e2e = np.array([c.deadline_s is not None or c.deadline_factor is not None for c in mix])
        ok_e2e = ~e2e[arr.klass] | (latency <= res.deadline_s)
        ok_ttft = np.isnan(ttft_dl) | (tok.ttft_s <= ttft_dl)
        ok_tpot = np.isnan(tpot_dl) | np.isnan(tok.tpot_s) | (tok.tpot_s <= tpot_dl)
        sla_met = completed & ok_e2e & ok_ttft & ok_tpot
    cols = {
        "policy": res.policy,
        "replication": replication,
        "request_id": np.arange(len(arr)),
        "client_id": arr.client,
        "client_class": np.array([g.name for g in groups])[arr.group],
        "request_class": np.array([c.name for c in mix])[arr.klass],
        "model": np.array([c.model for c in mix])[arr.klass],
        "task": np.array([c.task for c in mix])[arr.klass],
        "prompt_tokens": arr.prompt_tokens,
        "output_tokens": arr.output_tokens,
        "status": status,
        "arrival_s": arr.time_s,
        "finish_s": res.finish_s,
        "latency_s": latency,
        "deadline_s": res.deadline_s,
        "sla_met": sla_met,
        "planned_latency_s": res.planned_latency_s,
        "plan_feasible": res.plan_feasible,
        "server_wait_s": res.server_wait_s,
        "server_busy_s": res.server_busy_s,
        "client_wait_s": res.client_wait_s,
        "client_busy_s": res.client_busy_s,
        "transfer_s": res.transfer_s,
        "server_work": res.server_work,
        "server_only_work": res.server_only_work,
        "client_units": res.client_units,
        "switches": res.switches,
        "client_energy_j": res.client_energy_j,
        "ttft_s": tok.ttft_s if tok is not None else nan,
        "tpot_s": tok.tpot_s if tok is not None else nan,
        "itl_p50_s": tok.itl_p50_s if tok is not None else nan,
        "itl_p99_s": tok.itl_p99_s if tok is not None else nan,
        "itl_max_s": tok.itl_max_s if tok is not None else nan,
        "ttft_deadline_s": ttft_dl,
        "tpot_deadline_s": tpot_dl,
    }
    columns = list(REQUEST_COLUMNS)
    if res.server_of is not None:  # a fleet: the server of each request
        cols[FLEET_REQUEST_COLUMN] = np.array([s.name for s in ld.fleet])[res.server_of]
        columns.insert(columns.index(FLEET_AFTER) + 1, FLEET_REQUEST_COLUMN)
    return pd.DataFrame(cols, columns=columns)


def _server_rows(ld: LoadedScenario, res: RunResult, frame: pd.DataFrame, rep: int) -> list:
    """servers.csv rows of one run: each fleet server over the window after warm-up."""
    warmup, end = ld.scenario.warmup_s, res.end_s
    window = max(end - warmup, 0.0)
    df = frame[frame["arrival_s"] >= warmup]
    rows = []
    for s, (site, levels) in enumerate(zip(ld.fleet, res.fleet, strict=True)):
        mine = df[res.server_of[df.index] == s]
        done = mine[mine["status"] == STATUS_COMPLETED]
        admitted = mine[mine["status"] != STATUS_REJECTED]
        n = len(mine)
        rows.append({
            "policy": res.policy, "replication": rep, "server": site.name,
            "server_group": ld.scenario.servers[site.group].name, "device": site.device.name,
            "slots": levels.slots, "requests": n, "completed": len(done),
            "rejected": int((mine["status"] == STATUS_REJECTED).sum()),
            "throughput_rps": len(done) / window if window > 0 else float("nan"),
            "server_utilization": levels.utilization(warmup, end),
            "queue_length_mean": levels.mean_queue(warmup, end),
            "server_wait_mean_s": float(admitted["server_wait_s"].mean()) if len(admitted) else float("nan"),
            "server_busy_mean_s": float(admitted["server_busy_s"].mean()) if len(admitted) else float("nan"),
            "sla_violation_rate": float(1 - done["sla_met"].sum() / n) if n else float("nan"),
            "server_work_per_request": float(admitted["server_work"].mean()) if len(admitted) else float("nan"),
            **_server_token_columns(res, s, warmup, end),
        })  # fmt: skip
    return rows


def _server_token_columns(res: RunResult, s: int, warmup: float, end: float) -> dict:
    """servers.csv's token columns of server s (NaN at request granularity)."""
    if res.fleet_token is None or end <= warmup:
        return dict.fromkeys(("server_tokens_per_s", "batch_size_mean", "kv_memory_gb_mean"),
                             float("nan"))  # fmt: skip
    tokens, batch, kv = res.fleet_token[s]
    return {
        "server_tokens_per_s": (tokens.at(end) - tokens.at(warmup)) / (end - warmup),
        "batch_size_mean": batch.mean(warmup, end),
        "kv_memory_gb_mean": kv.mean(warmup, end) / 1e9,
    }


def _server_timeseries(ld: LoadedScenario, res: RunResult, rep: int, bins: int) -> pd.DataFrame:
    """timeseries_servers.csv rows of one run: each fleet server's busy slots and queue."""
    parts = []
    for site, levels in zip(ld.fleet, res.fleet, strict=True):
        t, busy, queue = levels.binned(res.end_s, bins)
        parts.append(pd.DataFrame({
            "policy": res.policy, "replication": rep, "server": site.name, "time_s": t,
            "server_busy_slots": busy, "server_utilization": busy / levels.slots,
            "queue_length": queue,
        }, columns=list(SERVER_TIMESERIES_COLUMNS)))  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def _timeseries(res: RunResult, replication: int, bins: int) -> pd.DataFrame:
    t, busy, queue = res.server.binned(res.end_s, bins)
    tok = res.token
    batch = tok.batch.binned(res.end_s, bins) if tok is not None else np.full(len(t), np.nan)
    kv = tok.kv_bytes.binned(res.end_s, bins) / 1e9 if tok is not None else np.full(len(t), np.nan)
    return pd.DataFrame(
        {
            "policy": res.policy,
            "replication": replication,
            "time_s": t,
            "server_busy_slots": busy,
            "server_utilization": busy / res.server.slots,
            "queue_length": queue,
            "batch_size": batch,
            "kv_memory_gb": kv,
        },
        columns=list(TIMESERIES_COLUMNS),
    )


def _book(ld: LoadedScenario):
    """The placement problems shared by every policy: one book, or a fleet's, per site."""
    return ProblemBook(ld) if ld.scenario.servers is None else FleetBooks.of(ld)


def _server_only_time(ld: LoadedScenario, book):
    """A request's server-only time (s) by (class, group, prompt, output, service); for a
    fleet's books, one such function per server group."""
    if isinstance(book, FleetBooks):
        return [_server_only_time(b.ld, b) for b in book]
    synthetic = [c.task == "synthetic" for c in ld.scenario.workload.mix]

    def server_only_s(klass: int, group: int, prompt: int, output: int, service: float) -> float:
        if synthetic[klass]:
            return service
        return float(book.get(klass, group, prompt, output).problem.server_time.sum())

    return server_only_s


def server_only_capacity(ld: LoadedScenario) -> float:
    """Requests per second the server sustains serving everything itself (slots / mean time).

    The scenario's arrival must be `load: 1.0`; its offered rate is exactly that capacity.
    """
    return offered_rate(ld, _server_only_time(ld, _book(ld)), check=False)


def _engine(ld: LoadedScenario) -> type:
    """The engine of the scenario's granularity (`sim.engine.registry`); a fleet's
    (`servers:`) at either granularity (`sim.engine.fleet`, `sim.engine.token_fleet`)."""
    if ld.scenario.servers is not None:
        token = ld.scenario.simulation.granularity == "token"
        return TokenFleetSimulation if token else FleetSimulation
    return engine_for(ld.scenario.simulation.granularity)


def _replication_arrivals(ld: LoadedScenario, rep: int, rate: float):
    """A replication's arrivals (shared by every policy) and its jitter seed."""
    streams = Streams.spawn(replication_seeds(ld.scenario.seed, ld.scenario.replications)[rep])
    return generate_arrivals(ld, streams, rate, replication=rep), streams.jitter_seed


def run_one(
    ld: LoadedScenario, policy: str, replication: int = 0, log: list | None = None
) -> RunResult:
    """One policy on one replication's arrivals, in memory; `log` collects the event timeline."""
    book = _book(ld)
    rate = offered_rate(ld, _server_only_time(ld, book))
    arrivals, jitter_seed = _replication_arrivals(ld, replication, rate)
    return _engine(ld)(ld, policy, arrivals, jitter_seed, book, log=log).run()


def _token_row(frame: pd.DataFrame, res: RunResult, warmup_s: float) -> dict:
    """The summary's token-granularity metrics (all NaN for a request-granularity run)."""
    tok = res.token
    if tok is None:
        return dict.fromkeys(TOKEN_SUMMARY_KEYS, float("nan"))
    row = token_summary(frame, warmup_s, res.end_s, tok.gaps)
    window = res.end_s - warmup_s
    tokens = tok.server_tokens
    served = tokens.at(res.end_s) - tokens.at(warmup_s)
    row["server_tokens_per_s"] = served / window if window > 0 else float("nan")
    row["batch_size_mean"] = tok.batch.mean(warmup_s, res.end_s)
    row["batch_size_max"] = tok.batch.max(warmup_s, res.end_s)
    row["kv_memory_gb_mean"] = tok.kv_bytes.mean(warmup_s, res.end_s) / 1e9
    row["kv_memory_gb_max"] = tok.kv_bytes.max(warmup_s, res.end_s) / 1e9
    row["kv_memory_gb_capacity"] = tok.kv_capacity_bytes / 1e9
    row["preemptions"] = tok.preemptions
    return row


def prepare(ld: LoadedScenario) -> tuple[ProblemBook, float]:
    """The placement problems (shared by every policy) and the offered Poisson rate.

    This is where the work a scenario asks for is checked (at most 1e7 arrivals per
    replication), so `run_scenario` calls it before it makes any folder.
    """
    book = _book(ld)
    return book, offered_rate(ld, _server_only_time(ld, book))


def _offered(rate_per_s: float, arrivals: int, stop_s: float) -> float:
    """The Poisson rate, or for a trace its arrivals over their span (NaN when they all
    arrive at once: no span to divide by)."""
    if np.isfinite(rate_per_s):
        return rate_per_s
    return arrivals / stop_s if stop_s > 0 else float("nan")


def _offered_utilization(
    ld: LoadedScenario, book: ProblemBook, rate_per_s: float, mean_s: float | None, arrivals
) -> float:
    """The offered rate times the mean server-only time, per server slot: the expected
    mean (`sim.engine.load`) where it can be computed, else the replication's requests'."""
    if mean_s is None:
        if len(arrivals) == 0:
            return float("nan")
        time_of = _server_only_time(ld, book)
        mean_s = float(np.mean([
            time_of(int(k), int(g), int(p), int(o), float(s))
            for k, g, p, o, s in zip(arrivals.klass, arrivals.group, arrivals.prompt_tokens,
                                     arrivals.output_tokens, arrivals.service_s, strict=True)
        ]))  # fmt: skip
    return rate_per_s * mean_s / ld.scenario.server.slots


def _fleet_capacity_per_s(ld: LoadedScenario, book) -> float | None:
    """A fleet's server-only capacity (req/s; None without a fleet): the offered
    utilisation is the offered rate over it."""
    if not isinstance(book, FleetBooks):
        return None
    return server_capacity_per_s(ld, _server_only_time(ld, book))


def simulate(
    ld: LoadedScenario,
    progress: Callable[[int], None] | None = None,
    replications: Sequence[int] | None = None,
    prepared: tuple[ProblemBook, float] | None = None,
) -> ScenarioResult:
    """Run the scenario's replications (all, or the listed ones) and policies in memory."""
    sc = ld.scenario
    frames, summaries, series = [], [], []
    server_rows, server_series = [], []
    book, rate = prepared if prepared is not None else prepare(ld)
    engine = _engine(ld)
    mean_s = exact_mean_server_only_s(ld) if np.isfinite(rate) else None
    fleet_capacity = _fleet_capacity_per_s(ld, book)
    for rep in replications if replications is not None else range(sc.replications):
        arrivals, jitter_seed = _replication_arrivals(ld, rep, rate)
        for policy in sc.policies:
            res = engine(ld, policy, arrivals, jitter_seed, book, progress).run()
            frame = _frame(ld, res, rep)
            util = res.server.utilization(sc.warmup_s, res.end_s)
            queue = res.server.mean_queue(sc.warmup_s, res.end_s)
            row = summarize(frame, sc.warmup_s, res.end_s, util, queue, res.backlog_at_stop)
            row["offered_rate_per_s"] = _offered(rate, len(arrivals), res.stop_s)
            row["offered_utilization"] = (
                _offered_utilization(ld, book, row["offered_rate_per_s"], mean_s, arrivals)
                if fleet_capacity is None else row["offered_rate_per_s"] / fleet_capacity
            )  # fmt: skip
            row["overload_stop_s"] = res.overload_stop_s  # NaN unless max_in_flight stopped it
            row.update(_token_row(frame, res, sc.warmup_s))
            summaries.append({"policy": policy, "replication": rep, **row})
            frames.append(frame)
            series.append(_timeseries(res, rep, sc.output.timeseries_bins))
            if res.fleet is not None:
                server_rows += _server_rows(ld, res, frame, rep)
                server_series.append(_server_timeseries(ld, res, rep, sc.output.timeseries_bins))
            if progress:
                progress(-1)
    effective = effective_dict(ld)
    return ScenarioResult(
        requests=pd.concat(frames, ignore_index=True),
        summary=pd.DataFrame(summaries, columns=list(SUMMARY_COLUMNS)),
        timeseries=pd.concat(series, ignore_index=True),
        effective=effective,
        servers=pd.DataFrame(server_rows, columns=list(SERVER_COLUMNS)) if server_series else None,
        server_timeseries=pd.concat(server_series, ignore_index=True) if server_series else None,
    )


def run_scenario(
    ld: LoadedScenario,
    out_dir: str | Path | None = None,
    command: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScenarioResult:
    """Run a loaded scenario and, with `out_dir`, write its result folder atomically.

    The output path is checked, and its temporary sibling made, before simulating, so a bad
    path costs no simulation time. If the simulation fails, its record (the effective
    scenario and a manifest with `status: failed`, the error and, for a bug, the traceback)
    goes to `out_dir`, or to `out_dir.failed/` when `out_dir` holds a finished result: a
    failed run never costs a finished one.
    """
    started = time.perf_counter()
    effective = effective_dict(ld)
    manifest = {
        "package": "splitsim",
        "kind": KIND_RUN,
        "version": sim.__version__,
        "seed": ld.scenario.seed,
        "scenario": ld.source,
        "scenario_hash": scenario_hash(effective),
        "command": command if command is not None else sys.argv,
        "python": sys.version.split()[0],
    }
    prepared = prepare(ld)  # a scenario asking for too much work fails here, leaving nothing
    pending = PendingResult.open(Path(out_dir)) if out_dir is not None else None
    try:
        result = simulate(ld, progress, prepared=prepared)
    except Exception as err:
        manifest.update(status="failed", error=f"{type(err).__name__}: {err}")
        manifest["wall_time_s"] = round(time.perf_counter() - started, 3)
        if not isinstance(err, UserError):
            manifest["traceback"] = traceback.format_exc()
        if pending is None:
            raise
        where = pending.commit_failure(effective, manifest)
        raised = failure_error(err, where, pending.out_dir)
        if raised is err:
            raise
        raise raised from err
    except BaseException:  # interrupted: no result, no leftovers
        if pending is not None:
            pending.discard()
        raise
    manifest.update(status="ok", wall_time_s=round(time.perf_counter() - started, 3))
    result.manifest = manifest
    if pending is not None:
        try:
            pending.commit(effective, manifest, result, ld.scenario.output.format)
        except OSError as err:
            raise os_error_line(pending.out_dir, err) from None
    return result
