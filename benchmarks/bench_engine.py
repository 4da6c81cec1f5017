"""Engine speed and memory: splitsim against a bare SimPy loop with the same events.

A 100,000-request scenario (policy dp, request granularity, three client groups, a
forward-task mix whose plans put some units on the client and some on the server) is
run through `sim.engine.run.Simulation`, and the same requests are run through a bare
SimPy loop with the same events per request -- arrival process; per request the plan's
segments in order: client Resource hold, transfer timeout, server Resource (FIFO, as the engine)
request and hold -- using the same arrival times, the same devices and the same
segment times taken from the simulation's own plans, and no bookkeeping.

Target: splitsim runs at no less than 40 % of the bare loop's rate (requests/s, measured
in the same process, median of --repeats runs each), and peak memory stays under 1 GB.

Planning (building the distinct plans) is timed separately: the timed simulation runs
use a plan cache filled beforehand, as every run after the first of a scenario does.

    python benchmarks/bench_engine.py [--requests 100000] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import inspect
import pstats
import resource
import statistics
import sys
import time
import tracemalloc
from collections import Counter

import numpy as np
import simpy

from sim.config import validate
from sim.engine.planner import CLIENT, SERVER, XFER, Planner, ProblemBook
from sim.engine.run import Simulation
from sim.engine.workload import Streams, generate_arrivals, replication_seeds
from sim.records import RequestStatus

TARGET_RATIO = 0.4
MEMORY_LIMIT_MB = 1024.0


def scenario(requests: int, rate_per_s: float) -> dict:
    """Phones, laptops and Raspberry Pi cameras sharing one A100 slot; three forward tasks.

    Prompt sizes: `classify` uniform 64..512 rounded (449 distinct values), the others
    fixed per class, so the plan cache holds a realistic, limited number of plans.
    """
    return {
        "name": "bench-engine",
        "seed": 7,
        "requests": requests,
        "policies": ["dp"],
        "server": {"device": "a100-80gb", "slots": 1},
        "clients": [
            {
                "name": "phones",
                "count": 60,
                "device": "phone-flagship",
                "link": {"uplink_mbps": 50, "downlink_mbps": 200, "rtt_ms": 20},
            },
            {
                "name": "laptops",
                "count": 30,
                "device": "laptop-m2",
                "link": {"uplink_mbps": 100, "downlink_mbps": 300, "rtt_ms": 10},
            },
            {
                "name": "cameras",
                "count": 60,
                "device": "rpi4",
                "link": {"uplink_mbps": 50, "downlink_mbps": 200, "rtt_ms": 20},
            },
        ],
        "workload": {
            "arrival": {"kind": "poisson", "rate_per_s": rate_per_s},
            "mix": [
                {
                    "name": "classify",
                    "model": "bert-large",
                    "task": "forward",
                    "prompt_tokens": {"kind": "uniform", "low": 64, "high": 512},
                    "deadline_factor": 4,
                    "weight": 2,
                },
                {
                    "name": "score",
                    "model": "gpt2-medium",
                    "task": "forward",
                    "prompt_tokens": 256,
                    "deadline_factor": 4,
                    "weight": 1,
                },
                {
                    "name": "vision",
                    "model": "vit-b16",
                    "task": "forward",
                    "prompt_tokens": 197,
                    "deadline_factor": 2,
                    "weight": 1,
                },
            ],
        },
        "split": {"granularity": "block"},
    }


# ---------------------------------------------------------------------------- splitsim


def _arrivals(ld, streams, rate_per_s: float):
    """The replication's arrivals (`generate_arrivals` takes the total rate when it can)."""
    if "rate_per_s" in inspect.signature(generate_arrivals).parameters:
        return generate_arrivals(ld, streams, rate_per_s)
    return generate_arrivals(ld, streams)


def fill_plans(ld, arrivals, book: ProblemBook, policy: str):
    """A planner with every request's plan built, the time that took, and the plan per request."""
    planner = Planner(book, policy)
    keys = np.stack(
        [arrivals.klass, arrivals.group, arrivals.prompt_tokens, arrivals.output_tokens], 1
    )
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    t0 = time.perf_counter()
    plans = [planner.get(*(int(x) for x in row)) for row in uniq]
    planning_s = time.perf_counter() - t0
    return planner, plans, inverse.reshape(-1), planning_s


def make_simulation(ld, arrivals, streams, book, planner) -> Simulation:
    # plans already built: time the engine alone
    return Simulation(ld, "dp", arrivals, streams.jitter_seed, book, planner=planner)


def time_splitsim(ld, arrivals, streams, book, planner):
    """Wall time of building and running one simulation, its event count and result."""
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    sim_ = make_simulation(ld, arrivals, streams, book, planner)
    res = sim_.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # every event SimPy scheduled, all processed (RunResult.events, or the id counter)
    events = res.events or next(sim_.env._eid)
    return wall, cpu, events, res


# ---------------------------------------------------------------------------- bare loop


def bare_inputs(ld, arrivals, streams, book, plans, plan_of):
    """Per request: its segments as (kind, seconds) and its device, from splitsim's plans.

    Transfer times are what the engine computes for them (serialisation at the link's
    bandwidth plus half an RTT per crossing); the scenario has no trace, jitter or
    shared medium, so they are fixed per plan.
    """
    links = make_simulation(ld, arrivals, streams, book, None).links
    per_plan_group: dict[tuple[int, int], tuple] = {}
    segs = []
    groups = arrivals.group.tolist()
    for i, p in enumerate(plan_of.tolist()):
        g = groups[i]
        key = (p, g)
        s = per_plan_group.get(key)
        if s is None:
            link = links[g]
            out = []
            for seg in plans[p].segments:
                if seg[0] == XFER:
                    d = link.serialisation_s(seg[1], seg[2], 0.0) + link.delay_s(seg[3])
                    out.append((XFER, d))
                else:
                    out.append((seg[0], seg[1]))
            s = per_plan_group[key] = tuple(out)
        segs.append(s)
    return arrivals.time_s.tolist(), segs, arrivals.client.tolist()


def bare_loop(times: list, segs: list, clients: list, n_devices: int, slots: int):
    """The same events per request as splitsim, with no bookkeeping at all."""
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=slots)
    devices = [simpy.Resource(env, 1) for _ in range(n_devices)]
    timeout = env.timeout

    def request(segments, device):
        for kind, d in segments:
            if kind == SERVER:
                req = server.request()
                yield req
                yield timeout(d)
                server.release(req)
            elif kind == CLIENT:
                req = device.request()
                yield req
                yield timeout(d)
                device.release(req)
            else:
                yield timeout(d)

    def source():
        process = env.process
        for i in range(len(times)):
            gap = times[i] - env.now
            if gap > 0:
                yield timeout(gap)
            process(request(segs[i], devices[clients[i]]))

    env.process(source())
    env.run()
    return env


def time_bare(inputs, n_devices: int, slots: int):
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    env = bare_loop(*inputs, n_devices, slots)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, next(env._eid), env.now


# ---------------------------------------------------------------------------- main


def maxrss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=850.0, help="arrivals per second")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile one splitsim run")
    ap.add_argument("--no-tracemalloc", action="store_true")
    args = ap.parse_args(argv)

    ld = validate(scenario(args.requests, args.rate), source="bench_engine")
    sc = ld.scenario
    t0 = time.perf_counter()
    seq = replication_seeds(sc.seed, sc.replications)[0]
    streams = Streams.spawn(seq)
    arrivals = _arrivals(ld, streams, args.rate)
    arrivals_s = time.perf_counter() - t0
    book = ProblemBook(ld)
    planner, plans, plan_of, planning_s = fill_plans(ld, arrivals, book, "dp")
    n = len(arrivals)

    # the workload as the engine sees it
    seg_count = np.array([len(p.segments) for p in plans])[plan_of]
    kinds: Counter = Counter()
    shapes: Counter = Counter()
    for p, c in zip(*np.unique(plan_of, return_counts=True), strict=True):
        for s in plans[p].segments:
            kinds[("client", "server", "transfer")[s[0]]] += int(c)
        shapes["".join("CSX"[s[0]] for s in plans[p].segments)] += int(c)

    # cold run: a fresh plan cache, planning included (as the first policy run does)
    gc.collect()
    t0 = time.perf_counter()
    cold = Simulation(ld, "dp", arrivals, streams.jitter_seed, ProblemBook(ld)).run()
    cold_s = time.perf_counter() - t0
    rss_after_sim = maxrss_mb()

    inputs = bare_inputs(ld, arrivals, streams, book, plans, plan_of)
    sim_times, bare_times, sim_cpu, bare_cpu = [], [], [], []
    sim_events = bare_events = 0
    res = None
    bare_end = 0.0
    for _ in range(args.repeats):
        wall, cpu, bare_events, bare_end = time_bare(inputs, sc.total_clients, sc.server.slots)
        bare_times.append(wall)
        bare_cpu.append(cpu)
        wall, cpu, sim_events, res = time_splitsim(ld, arrivals, streams, book, planner)
        sim_times.append(wall)
        sim_cpu.append(cpu)
    rss_peak = maxrss_mb()
    assert res is not None
    same = np.array_equal(res.finish_s, cold.finish_s, equal_nan=True)
    if not same:
        print("WARNING: warm and cold runs differ", file=sys.stderr)
    if abs(bare_end - res.end_s) > 1e-6 * max(1.0, res.end_s):
        print(f"WARNING: bare loop ends at {bare_end}, splitsim at {res.end_s}", file=sys.stderr)

    tm_peak_mb = float("nan")
    if not args.no_tracemalloc:
        gc.collect()
        tracemalloc.start()
        time_splitsim(ld, arrivals, streams, book, planner)
        tm_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()

    server = res.server
    series = (server.busy.t, server.busy.level, server.queue.t, server.queue.level)
    change_mb = sum(a.itemsize * len(a) for a in series) / 2**20
    sim_med, bare_med = statistics.median(sim_times), statistics.median(bare_times)
    sim_rate, bare_rate = n / sim_med, n / bare_med
    ratio = sim_rate / bare_rate
    done = res.status == RequestStatus.COMPLETED
    latency = res.finish_s - arrivals.time_s
    util = server.utilization(0.0, res.end_s)

    def row(label: str, *cells: str) -> None:
        print(f"{label:<44}" + "".join(f"{c:>14}" for c in cells))

    paired = statistics.median(b / s for s, b in zip(sim_times, bare_times, strict=True))
    ok_rate = ratio >= TARGET_RATIO
    ok_mem = rss_peak < MEMORY_LIMIT_MB
    rule = "-" * 72
    print(
        f"\nsplitsim engine benchmark (Python {sys.version.split()[0]}, SimPy {simpy.__version__})"
    )
    print(rule)
    row("requests", f"{n:,}")
    row("arrival rate (1/s) / simulated end (s)", f"{args.rate:,.0f}", f"{res.end_s:,.1f}")
    row("server utilisation", f"{util:.3f}")
    row("completed / SLA met", f"{done.mean():.3f}", f"{np.mean(latency <= res.deadline_s):.3f}")
    row("mean segments per request", f"{seg_count.mean():.3f}")
    for k in ("client", "transfer", "server"):
        row(f"  {k} segments per request", f"{kinds[k] / n:.3f}")
    row("plan shapes (share of requests)")
    row("  " + ", ".join(f"{s}={c / n:.2f}" for s, c in shapes.most_common()))
    row("distinct plans built", f"{len(plans):,}")
    row("planning time (s)", f"{planning_s:.3f}")
    row("arrival generation time (s)", f"{arrivals_s:.3f}")
    row("cold splitsim run incl. planning (s)", f"{cold_s:.3f}")
    print(rule)
    row("", "splitsim", "bare SimPy")
    row("wall times (s)", " ".join(f"{t:.2f}" for t in sim_times))
    row("", "", " ".join(f"{t:.2f}" for t in bare_times))
    row("median wall time (s)", f"{sim_med:.3f}", f"{bare_med:.3f}")
    row("median CPU time (s)", f"{statistics.median(sim_cpu):.3f}",
        f"{statistics.median(bare_cpu):.3f}")  # fmt: skip
    row("requests / s", f"{sim_rate:,.0f}", f"{bare_rate:,.0f}")
    row("SimPy events", f"{sim_events:,}", f"{bare_events:,}")
    row("SimPy events per request", f"{sim_events / n:.2f}", f"{bare_events / n:.2f}")
    row("SimPy events / s", f"{sim_events / sim_med:,.0f}", f"{bare_events / bare_med:,.0f}")
    row("simulated end time equal (bare vs splitsim)", "yes" if bare_end == res.end_s else "NO")
    row("us per request", f"{1e6 * sim_med / n:.1f}", f"{1e6 * bare_med / n:.1f}")
    print(rule)
    row("rate ratio splitsim / bare (target >= 0.40)", f"{ratio:.3f}", "OK" if ok_rate else "BELOW")
    row("  median of paired ratios / ratio of minima", f"{paired:.3f}",
        f"{min(bare_times) / min(sim_times):.3f}")  # fmt: skip
    cpu_ratio = statistics.median(bare_cpu) / statistics.median(sim_cpu)
    row("  same from CPU time (median), less noisy", f"{cpu_ratio:.3f}")
    row("peak RSS after cold splitsim run (MB)", f"{rss_after_sim:.1f}")
    row("peak RSS, whole benchmark (MB)", f"{rss_peak:.1f}", "OK" if ok_mem else "ABOVE 1 GB")
    row("tracemalloc peak, one splitsim run (MB)", f"{tm_peak_mb:.1f}")
    row("server change arrays (MB / points)", f"{change_mb:.2f}", f"{len(server.busy.t):,}")
    print(rule)

    if args.profile:
        prof = cProfile.Profile()
        sim_ = make_simulation(ld, arrivals, streams, book, planner)
        prof.enable()
        sim_.run()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return 0 if ok_rate and ok_mem else 1


if __name__ == "__main__":
    sys.exit(main())
