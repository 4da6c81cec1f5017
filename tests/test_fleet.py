"""A fleet of servers (`servers:`, `routing:`): queueing theory, conservation per server,
split-aware routing against its own rule, outputs, bad input, and `server:` unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from sim.cli import main
from sim.config import load_scenario
from sim.config.fleet import site_view
from sim.engine.fleet import FleetBooks
from sim.engine.planner import Planner, ProblemBook
from sim.engine.token_fleet import TokenFleetSimulation
from sim.errors import UserError
from sim.runner import _replication_arrivals, prepare, run_one

MEAN_SERVICE_S = 0.01  # mu = 100 / s per server


def synthetic(servers: int, rho: float, routing: str, requests: int, seed: int = 1) -> dict:
    """`servers` identical one-slot servers with exponential service (mean 10 ms) at
    utilisation `rho`, Poisson arrivals, the given router."""
    return {
        "name": "mm1", "seed": seed, "requests": requests, "policies": ["server_only"],
        "servers": [{"name": "s", "device": "a100-80gb", "count": servers}],
        "routing": {"policy": routing},
        "clients": [{"name": "c", "count": 10, "device": "laptop-m2"}],
        "workload": {
            "arrival": {"kind": "poisson", "rate_per_s": servers * rho / MEAN_SERVICE_S},
            "mix": [{"name": "job", "task": "synthetic", "deadline_factor": 10,
                     "service_s": {"kind": "exponential", "mean": MEAN_SERVICE_S}}],
        },
    }  # fmt: skip


def _load(tmp_path, raw: dict, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return load_scenario(path)


def mean_waits(tmp_path, raw: dict, reps: int, warm: int = 2000) -> np.ndarray:
    """Mean server wait per replication (the first `warm` requests left out)."""
    raw = {**raw, "replications": reps}
    ld = _load(tmp_path, raw)
    return np.array([run_one(ld, "server_only", r).server_wait_s[warm:].mean()
                     for r in range(reps)])  # fmt: skip


def test_random_routing_is_independent_mm1_queues(tmp_path):
    """Random routing splits a Poisson stream into independent Poisson streams: each
    server is an M/M/1 queue at lambda / N, mean wait rho / (mu - lambda / N)."""
    rho, mu = 0.7, 1 / MEAN_SERVICE_S
    waits = mean_waits(tmp_path, synthetic(4, rho, "random", 20_000), reps=8)
    expect = rho / (mu - rho * mu)
    half = stats.t.ppf(0.995, len(waits) - 1) * waits.std(ddof=1) / np.sqrt(len(waits))
    assert abs(waits.mean() - expect) <= half, (waits.mean(), expect, half)


def test_power_of_two_is_near_the_supermarket_mean_field(tmp_path):
    """At N = 40 servers, rho = 0.9, power-of-two's requests per server approach the mean
    field's sum over i >= 1 of rho^(2^i - 1) (Mitzenmacher); by Little's law the mean time
    in system is that over the per-server rate. Random routing waits far longer."""
    rho, n = 0.9, 40
    raw = synthetic(n, rho, "power_of_two", 60_000)
    ld = _load(tmp_path, raw)
    res = run_one(ld, "server_only", 0)
    sojourn = (res.server_wait_s + res.server_busy_s)[10_000:].mean()
    per_server = sum(rho ** (2**i - 1) for i in range(1, 12))
    expect = per_server / (rho / MEAN_SERVICE_S)
    assert sojourn == pytest.approx(expect, rel=0.06)
    random_wait = rho * MEAN_SERVICE_S / (1 - rho)  # M/M/1 at rho
    assert res.server_wait_s[10_000:].mean() < 0.3 * random_wait


@pytest.mark.parametrize("routing", ["least_outstanding", "power_of_two", "shortest_expected_wait"])
def test_load_aware_routers_wait_less_than_random(tmp_path, routing):
    base = mean_waits(tmp_path, synthetic(8, 0.85, "random", 8_000, seed=5), reps=3)
    mine = mean_waits(tmp_path, synthetic(8, 0.85, routing, 8_000, seed=5), reps=3)
    assert mine.mean() < 0.5 * base.mean()


def test_round_robin_takes_servers_in_turn(tmp_path):
    ld = _load(tmp_path, synthetic(3, 0.5, "round_robin", 30))
    res = run_one(ld, "server_only", 0)
    assert res.server_of.tolist() == [0, 1, 2] * 10


def edge_cloud(routing: str = "split_aware", policies=("server_only", "dp")) -> dict:
    """An L4-class edge server near the clients and an A100 far away, laptops and phones."""
    return {
        "name": "ec", "seed": 4, "requests": 400, "policies": list(policies),
        "servers": [{"name": "edge", "device": "a100-40gb", "slots": 1},
                    {"name": "cloud", "device": "a100-80gb", "count": 2, "max_queue": 30}],
        "routing": {"policy": routing},
        "clients": [
            {"name": "laptops", "count": 20, "device": "laptop-m2",
             "link": {"uplink_mbps": 50, "downlink_mbps": 200, "rtt_ms": 30},
             "sites": {"edge": {"rtt_ms": 4}, "cloud": {"rtt_ms": 45, "uplink_mbps": 20}}},
            {"name": "phones", "count": 20, "device": "phone-flagship", "resident": "none"},
        ],
        "workload": {
            "arrival": {"kind": "poisson", "rate_per_s": 150},
            "mix": [{"name": "score", "model": "gpt2-large", "task": "forward",
                     "prompt_tokens": {"kind": "uniform", "low": 64, "high": 512},
                     "deadline_s": 0.25}],
        },
    }  # fmt: skip


@pytest.mark.parametrize("routing", ["random", "least_outstanding", "split_aware"])
@pytest.mark.parametrize("policy", ["server_only", "dp", "dp_queue_aware"])
def test_each_server_conserves_its_busy_time_and_waits(tmp_path, routing, policy):
    """Per server: the busy time its requests record is its busy integral, and their
    waits its queue integral (rejected requests included, with what they used)."""
    ld = _load(tmp_path, edge_cloud(routing, [policy]))
    res = run_one(ld, policy, 0)
    assert len(res.fleet) == 3 and (res.server_of >= 0).all()
    for s, levels in enumerate(res.fleet):
        mine = res.server_of == s
        assert res.server_busy_s[mine].sum() == pytest.approx(levels.busy_integral, rel=1e-9)
        assert res.server_wait_s[mine].sum() == pytest.approx(
            levels.queue_integral, rel=1e-9, abs=1e-12
        )
    assert res.server.busy_integral == pytest.approx(sum(v.busy_integral for v in res.fleet))
    assert res.server.slots == 3  # the edge one slot, two cloud servers one each


def test_split_aware_picks_the_least_work_per_slot_that_meets_the_sla(tmp_path):
    """Replaying the router's rule from the recorded state: each request's server gives
    the least planned server work per slot among the servers whose plan meets the SLA
    (at zero wait: a light load, so no queue forms)."""
    raw = edge_cloud("split_aware", ["dp"])
    raw["workload"]["arrival"]["rate_per_s"] = 2
    raw["requests"] = 60
    ld = _load(tmp_path, raw)
    res = run_one(ld, "dp", 0)
    books = FleetBooks.of(ld)
    planners = [Planner(b, "dp") for b in books]
    slots = [1, 1, 1]
    arr = res.arrivals
    for i in range(len(arr)):
        key = (int(arr.klass[i]), int(arr.group[i]), int(arr.prompt_tokens[i]), 0)
        options = []
        for s, site in enumerate(ld.fleet):
            p = planners[site.group].get(*key)
            if p.plan.feasible and p.plan.latency <= p.deadline_s:
                options.append((p.plan.server_work / slots[s], p.plan.latency, s))
        assert options, "some server meets the SLA at this light load"
        best = min(options)
        chosen = int(res.server_of[i])
        assert res.server_work[i] == pytest.approx(best[0] * slots[chosen])
        assert (res.server_work[i] / slots[chosen], res.planned_latency_s[i]) == pytest.approx(
            best[:2]
        )


def test_sites_change_the_links_plans_see(tmp_path):
    ld = _load(tmp_path, edge_cloud())
    edge, cloud = site_view(ld, 0), site_view(ld, 1)
    assert edge.scenario.clients[0].link.rtt_ms == 4
    assert cloud.scenario.clients[0].link.rtt_ms == 45
    assert cloud.scenario.clients[0].link.uplink_mbps == 20
    assert cloud.scenario.clients[0].link.downlink_mbps == 200  # not set for the site
    assert edge.scenario.clients[1].link.rtt_ms == 30  # phones set no sites
    assert cloud.server_device.name == "a100-80gb" and cloud.scenario.server.max_queue == 30


def test_a_fleet_result_folder(tmp_path, capsys):
    path = tmp_path / "ec.yaml"
    raw = edge_cloud("least_outstanding")
    raw["replications"] = 2
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    out = tmp_path / "out"
    requests = pd.read_csv(out / "requests.csv")
    assert (
        list(requests.columns).index("server") == list(requests.columns).index("client_class") + 1
    )
    assert set(requests["server"]) <= {"edge", "cloud-0", "cloud-1"}
    servers = pd.read_csv(out / "servers.csv")
    assert len(servers) == 2 * 2 * 3  # policies x replications x servers
    summary = pd.read_csv(out / "summary.csv")
    for (policy, rep), rows in servers.groupby(["policy", "replication"]):
        row = summary[(summary.policy == policy) & (summary.replication == rep)].iloc[0]
        assert rows["requests"].sum() == row["requests"]
        assert rows["completed"].sum() == row["completed"]
        # the fleet's utilisation is the slot-weighted mean of its servers'
        fleet = (rows["server_utilization"] * rows["slots"]).sum() / rows["slots"].sum()
        assert row["server_utilization"] == pytest.approx(fleet)
    series = pd.read_csv(out / "timeseries_servers.csv")
    assert set(series["server"]) == {"edge", "cloud-0", "cloud-1"}
    effective = yaml.safe_load((out / "scenario.yaml").read_text())
    assert "server" not in effective and effective["routing"]["policy"] == "least_outstanding"


def test_one_server_results_keep_their_form(tmp_path, capsys):
    """`server:` is a fleet of one: no server column, no per-server files, and the
    effective scenario names no fleet fields."""
    raw = edge_cloud()
    del raw["servers"], raw["routing"]
    for c in raw["clients"]:
        c.pop("sites", None)
    raw["server"] = {"device": "a100-80gb"}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    out = tmp_path / "out"
    assert "server" not in pd.read_csv(out / "requests.csv").columns
    assert not (out / "servers.csv").exists() and not (out / "timeseries_servers.csv").exists()
    text = (out / "scenario.yaml").read_text()
    assert "servers" not in text and "routing" not in text and "sites" not in text


def test_models_limit_where_a_request_goes(tmp_path):
    raw = edge_cloud("round_robin", ["server_only"])
    raw["servers"][1]["models"] = ["gpt2-large"]
    raw["servers"][0]["models"] = ["gpt2"]
    ld = _load(tmp_path, raw)
    res = run_one(ld, "server_only", 0)
    assert set(res.server_of.tolist()) == {1, 2}  # the edge holds another model


def test_load_is_the_fleet_capacity(tmp_path):
    """`load: x` offers x times the fleet's server-only capacity (every slot of every
    server over its mean time)."""
    raw = synthetic(3, 0.5, "random", 100)
    raw["servers"][0]["slots"] = 2
    raw["workload"]["arrival"] = {"kind": "poisson", "load": 0.8}
    ld = _load(tmp_path, raw)
    _, rate = prepare(ld)
    assert rate == pytest.approx(0.8 * 3 * 2 / MEAN_SERVICE_S)


BAD = [
    (lambda r: r.update(server={"device": "h100-sxm"}), "servers", "not both"),
    (
        lambda r: r["clients"][0]["sites"].update(moon={"rtt_ms": 1}),
        "clients.0.sites.moon",
        "no server group named 'moon'",
    ),
    (lambda r: r["servers"][0].update(models=["nope"]), "servers.0.models.0", "unknown model"),
    (
        lambda r: [g.update(models=["gpt2"]) for g in r["servers"]],
        "workload.mix.0.model",
        "no server group holds 'gpt2-large'",
    ),
    (lambda r: r["servers"][1].update(count=0), "servers.1.count", "1"),
    (lambda r: r["routing"].update(policy="fastest"), "routing.policy", "round_robin"),
    (
        lambda r: r["clients"][0]["sites"]["edge"].update(rtt_ms=-1),
        "clients.0.sites.edge.rtt_ms",
        ">= 0",
    ),
    (lambda r: r["servers"].append(dict(r["servers"][0])), "servers", "unique"),
]


@pytest.mark.parametrize(("change", "field", "says"), BAD)
def test_bad_fleet_input_is_one_line(tmp_path, capsys, change, field, says):
    raw = copy.deepcopy(edge_cloud())
    change(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and field in err and says in err, err
    assert not (tmp_path / "out").exists()


def test_routing_without_a_fleet_is_refused(tmp_path):
    raw = synthetic(2, 0.5, "random", 10)
    raw["server"] = {"device": "a100-80gb"}
    del raw["servers"]
    with pytest.raises(UserError, match="routing needs a fleet"):
        _load(tmp_path, raw)


def test_capacity_search_per_routing_and_policy(tmp_path, capsys):
    """A capacity sweep over a fleet: routing policies as a grid factor, allocation
    policies searched per point."""
    (tmp_path / "ec.yaml").write_text(yaml.safe_dump({**edge_cloud(), "requests": 200}))
    (tmp_path / "cap.yaml").write_text(yaml.safe_dump({
        "name": "cap", "base": "ec.yaml", "replications": 2,
        "grid": {"routing.policy": ["random", "split_aware"]},
        "capacity": {"policies": ["server_only", "dp"], "rel_tol": 0.2},
    }))  # fmt: skip
    assert main(["sweep", str(tmp_path / "cap.yaml"), "-o", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "capacity.csv")
    assert table["error"].isna().all()
    assert len(table) == 2 * 2 * 2  # routers x policies x replications
    assert (table["capacity_rps"] > 0).all()


VARIANTS = {
    "overload_stop": {"simulation": {"max_in_flight": 40}, "workload.arrival.rate_per_s": 20_000},
    "edf_and_queue": {"servers.0.discipline": "edf", "servers.1.discipline": "edf"},
    "link_estimate_ewma": {"split": {"link_estimate": "ewma"}},
    "link_estimate_oracle": {"split": {"link_estimate": "oracle"}},
    "busy_shedding": {"split": {"busy_utilization": 0.5}},
    "warmup_and_replications": {"warmup_s": 0.5, "replications": 2},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("routing", ["power_of_two", "split_aware"])
def test_fleet_variants_run_and_conserve(tmp_path, variant, routing):
    """Settings a fleet combines with: each runs, every arrived request has a server, and
    each server's busy time is what its requests record."""
    raw = edge_cloud(routing, ["server_only", "dp", "dp_queue_aware"])
    for key, value in VARIANTS[variant].items():
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    ld = _load(tmp_path, raw)
    for policy in ld.scenario.policies:
        res = run_one(ld, policy, ld.scenario.replications - 1)
        assert len(res.server_of) == len(res.arrivals) and (res.server_of >= 0).all()
        for s, levels in enumerate(res.fleet):
            mine = res.server_of == s
            assert res.server_busy_s[mine].sum() == pytest.approx(levels.busy_integral, rel=1e-9)
        if variant == "overload_stop":
            assert np.isfinite(res.overload_stop_s) and len(res.arrivals) < 400


def test_a_fleet_replays_a_trace(tmp_path, capsys):
    rng = np.random.default_rng(2)
    pd.DataFrame({"arrival_s": np.cumsum(rng.exponential(0.01, 300)),
                  "prompt_tokens": rng.integers(32, 400, 300), "output_tokens": 0}).to_csv(
        tmp_path / "t.csv", index=False)  # fmt: skip
    raw = edge_cloud("least_outstanding", ["dp"])
    raw["workload"]["arrival"] = {"kind": "trace", "path": "t.csv"}
    del raw["requests"]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    requests = pd.read_csv(tmp_path / "out" / "requests.csv")
    assert len(requests) == 300 and requests["server"].notna().all()
    assert (tmp_path / "out" / "servers.csv").is_file()


@pytest.mark.parametrize("policy", ["dp", "dp_queue_aware", "server_only"])
def test_a_relative_sla_is_a_multiple_of_the_fastest_site(tmp_path, policy):
    """deadline_factor on a fleet whose sites differ: each request's SLA is the factor
    times the least server-only latency over the sites holding its model, whichever
    server it runs on (plans made before the run and at arrival alike)."""
    raw = edge_cloud("random", [policy])
    raw["workload"]["mix"][0].pop("deadline_s")
    raw["workload"]["mix"][0]["deadline_factor"] = 3
    raw["requests"] = 120
    ld = _load(tmp_path, raw)
    res = run_one(ld, policy, 0)
    alone = [ProblemBook(site_view(ld, g)) for g in range(2)]  # no peers: own latency
    one_by_one = FleetBooks.of(ld)  # no batch built: each problem on its own
    arr = res.arrivals
    for i in range(len(arr)):
        key = (int(arr.klass[i]), int(arr.group[i]), int(arr.prompt_tokens[i]), 0)
        own = [b.get(*key).deadline_s / 3 for b in alone]
        assert res.deadline_s[i] == pytest.approx(3 * min(own), rel=1e-12)
        for book in one_by_one:
            assert book.get(*key).deadline_s == pytest.approx(3 * min(own), rel=1e-12)
    assert len(set(res.server_of.tolist())) > 1  # served at both sites


def test_a_relative_sla_counts_only_sites_holding_the_model(tmp_path):
    raw = edge_cloud("round_robin", ["server_only"])
    raw["workload"]["mix"][0].pop("deadline_s")
    raw["workload"]["mix"][0]["deadline_factor"] = 3
    raw["servers"][0]["models"] = ["gpt2"]  # the edge cannot serve gpt2-large
    raw["requests"] = 40
    ld = _load(tmp_path, raw)
    res = run_one(ld, "server_only", 0)
    cloud = ProblemBook(site_view(ld, 1))
    arr = res.arrivals
    for i in range(len(arr)):
        key = (int(arr.klass[i]), int(arr.group[i]), int(arr.prompt_tokens[i]), 0)
        assert res.deadline_s[i] == pytest.approx(cloud.get(*key).deadline_s, rel=1e-12)


def chat_fleet(routing: str, policies: list[str]) -> dict:
    """Token granularity: an L4 near the laptops, two A100s far away, Qwen2.5-0.5B chat."""
    return {
        "name": "tf", "seed": 5, "requests": 200, "policies": policies,
        "servers": [{"name": "edge", "device": "l4", "max_queue": 40},
                    {"name": "cloud", "device": "a100-80gb", "count": 2}],
        "routing": {"policy": routing},
        "simulation": {"granularity": "token", "max_batch_requests": 32},
        "clients": [
            {"name": "laptops", "count": 2000, "device": "laptop-m2", "weight_dtype": "int4",
             "resident": "fit", "link": {"uplink_mbps": 50, "downlink_mbps": 200, "rtt_ms": 20},
             "sites": {"edge": {"rtt_ms": 5}, "cloud": {"rtt_ms": 40}}},
            {"name": "phones", "count": 2000, "device": "phone-flagship", "resident": "none"},
        ],
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": 30}, "mix": [{
            "name": "chat", "model": "qwen2.5-0.5b", "task": "generate",
            "prompt_tokens": {"kind": "uniform", "low": 64, "high": 1024},
            "output_tokens": {"kind": "uniform", "low": 8, "high": 96},
            "ttft_deadline_s": 0.5, "tpot_deadline_s": 0.05,
        }]},
    }  # fmt: skip


@pytest.mark.parametrize("routing", ["random", "least_outstanding", "split_aware"])
@pytest.mark.parametrize("policy", ["server_only", "dp", "dp_batched", "dp_phases"])
def test_a_token_fleet_runs_and_conserves_waits_per_server(tmp_path, routing, policy):
    """Token granularity: every request is served at one server; per server, the waits
    its requests record are its queue integral; the fleet's series are the servers' sums."""
    ld = _load(tmp_path, chat_fleet(routing, [policy]))
    res = run_one(ld, policy, 0)
    assert res.token is not None and len(res.fleet) == 3 and (res.server_of >= 0).all()
    done = res.status == 1
    assert done.mean() > 0.9
    for s, levels in enumerate(res.fleet):
        mine = res.server_of == s
        assert res.server_wait_s[mine].sum() == pytest.approx(levels.queue_integral, rel=1e-9,
                                                              abs=1e-12)  # fmt: skip
    end = res.end_s
    tokens = sum(series[0].at(end) for series in res.fleet_token)
    assert res.token.server_tokens.at(end) == pytest.approx(tokens)


@pytest.mark.parametrize("granularity", ["request", "token"])
def test_a_fleet_of_one_is_the_one_server(tmp_path, granularity):
    """`servers:` with one server (same device, settings, links) gives the requests
    `server:` gives, in both engines: the fleet adds routing, not behaviour."""
    if granularity == "token":
        raw = chat_fleet("round_robin", ["server_only", "dp_batched", "dp_phases"])
    else:
        raw = edge_cloud("round_robin", ["server_only", "dp", "dp_queue_aware"])
    for c in raw["clients"]:
        c.pop("sites", None)
    raw["servers"] = [{"name": "only", "device": "a100-80gb", "max_queue": 40}]
    one = copy.deepcopy(raw)
    del one["servers"], one["routing"]
    one["server"] = {"device": "a100-80gb", "max_queue": 40}
    fleet_ld, one_ld = _load(tmp_path, raw, "f.yaml"), _load(tmp_path, one, "o.yaml")
    for policy in raw["policies"]:
        a, b = run_one(fleet_ld, policy, 0), run_one(one_ld, policy, 0)
        assert np.array_equal(a.finish_s, b.finish_s, equal_nan=True), policy
        assert np.array_equal(a.server_wait_s, b.server_wait_s), policy
        assert np.array_equal(a.status, b.status), policy


def test_a_server_group_sets_its_own_batching(tmp_path):
    """servers[].max_batch_requests / max_batch_tokens / kv_memory_gb override the
    simulation's for that group's servers only."""
    raw = chat_fleet("least_outstanding", ["server_only"])
    raw["servers"][0].update(max_batch_requests=4, max_batch_tokens=600, kv_memory_gb=0.5)
    ld = _load(tmp_path, raw)
    books = FleetBooks.of(ld)
    arrivals, seed = _replication_arrivals(ld, 0, float("nan"))
    sim = TokenFleetSimulation(ld, "server_only", arrivals, seed, books)
    edge, cloud = sim.token_servers[0], sim.token_servers[1]
    assert (edge.max_batch, edge.max_tokens, edge.kv_capacity) == (4, 600, 0.5e9)
    assert (cloud.max_batch, cloud.max_tokens) == (32, 8192) and cloud.kv_capacity > 10e9
    res = sim.run()
    assert res.fleet_token[0][1].max(0, res.end_s) <= 4  # the edge's batch never exceeds 4


def test_group_batching_needs_token_granularity(tmp_path, capsys):
    raw = edge_cloud()
    raw["servers"][0]["max_batch_requests"] = 8
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "servers.0.max_batch_requests" in err and "token" in err
