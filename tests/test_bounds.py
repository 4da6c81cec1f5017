"""Bounded work: worker processes, Dask connections, sweep sizes, arrivals, overload memory.

Each bound fails in one line (`splitsim: error: ...`, exit status 2) before any work or
file is started, or, for the overload cap, stops the run and says so in its results.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from sim.cli import main
from sim.commands.sweep import OVERSUBSCRIBE_FACTOR, checked_jobs
from sim.errors import UserError
from sim.sweep.execute import check_dask_address, default_jobs
from sim.sweep.points import MAX_POINTS, MAX_TASKS, check_size
from sim.sweep.spec import SweepSpec

REPO = Path(__file__).resolve().parents[1]
HAS_DASK = importlib.util.find_spec("distributed") is not None

# A synthetic one-server scenario: a request is a server time, no model, no network.
BASE: dict = {
    "name": "tiny",
    "seed": 3,
    "requests": 50,
    "warmup_s": 0,
    "policies": ["server_only"],
    "server": {"device": "a100-80gb", "slots": 1},
    "clients": [
        {"name": "c", "count": 1, "link": {"uplink_mbps": 1000, "downlink_mbps": 1000, "rtt_ms": 0}}
    ],
    "workload": {
        "arrival": {"kind": "poisson", "rate_per_s": 5.0},
        "mix": [
            {
                "name": "job",
                "task": "synthetic",
                "service_s": {"kind": "exponential", "mean": 0.1},
                "deadline_s": 1.0,
            }
        ],
    },
}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_sweep(folder: Path, **body) -> Path:
    """A sweep over BASE in `folder` (base.yaml beside sweep.yaml)."""
    write_yaml(folder / "base.yaml", BASE)
    return write_yaml(folder / "sweep.yaml", {"name": "t", "base": "base.yaml", **body})


def one_error_line(err: str) -> str:
    """The single `splitsim: error:` line of a failed command (fails on anything else)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("splitsim: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- worker processes ----------------------------------------------------------------------


def test_jobs_default_is_the_cores():
    assert checked_jobs(None) == default_jobs()
    assert checked_jobs(1) == 1
    assert checked_jobs(default_jobs()) == default_jobs()


def test_jobs_above_the_cores_needs_oversubscribe():
    cores = default_jobs()
    with pytest.raises(UserError, match=r"--jobs: at most .*add --oversubscribe"):
        checked_jobs(cores + 1)
    assert checked_jobs(cores + 1, oversubscribe=True) == cores + 1
    cap = OVERSUBSCRIBE_FACTOR * cores
    assert checked_jobs(cap, oversubscribe=True) == cap
    with pytest.raises(UserError, match=rf"--jobs: {cap + 1} is too many"):
        checked_jobs(cap + 1, oversubscribe=True)
    with pytest.raises(UserError, match=r"--jobs: must be >= 1"):
        checked_jobs(0)


@pytest.mark.parametrize("command", ["sweep", "capacity", "paper"])
def test_jobs_flag_is_bounded_on_every_command(command, tmp_path, capsys):
    sweep = make_sweep(tmp_path, grid={"workload.arrival.rate_per_s": [1.0, 2.0]})
    target = {"sweep": [str(sweep)], "capacity": [str(tmp_path / "base.yaml")], "paper": []}
    out = tmp_path / "out"
    code = main([command, *target[command], "-o", str(out), "--jobs", "100000"])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("splitsim: error: --jobs: 100000 is too many")
    assert not out.exists()


# --- Dask ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["local", "tcp://127.0.0.1:8786", "127.0.0.1:8786", "tls://sched.example.org:8786",
     "inproc://192.0.2.2/5132/1", "tcp://[::1]:8786", "scheduler"],
)  # fmt: skip
def test_dask_address_forms_accepted(address):
    assert check_dask_address(address) == address


@pytest.mark.parametrize(
    "address", ["not an address", "http://127.0.0.1:8786", "tcp://", "host:", "tcp://h:99999"]
)
def test_dask_bad_address_is_one_line(address, tmp_path, capsys):
    sweep = make_sweep(tmp_path, grid={"workload.arrival.rate_per_s": [1.0]})
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "-o", str(out), "--dask", address]) == 2
    assert one_error_line(capsys.readouterr().err).startswith("splitsim: error: --dask: ")
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1", "601", "nan", "inf"])
def test_dask_timeout_range(value, tmp_path, capsys):
    sweep = make_sweep(tmp_path, grid={"workload.arrival.rate_per_s": [1.0]})
    with pytest.raises(SystemExit) as exc:  # the flag's range is checked while parsing
        main(["sweep", str(sweep), "-o", str(tmp_path / "o"), f"--dask-timeout-s={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "argument --dask-timeout-s: must be a number > 0 and <= 600" in err


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never says anything."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.accepted.append(conn)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.mark.skipif(not HAS_DASK, reason="needs the dask extra")
def test_dask_silent_peer_times_out(tmp_path):
    """A peer that accepts and never speaks: one line within the timeout (+ start-up)."""
    sweep = make_sweep(tmp_path, grid={"workload.arrival.rate_per_s": [1.0]})
    out = tmp_path / "out"
    server = SilentServer()
    try:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "sim", "sweep", str(sweep), "-o", str(out),
             "--dask", f"tcp://127.0.0.1:{server.port}", "--dask-timeout-s", "2"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "--dask: no Dask scheduler answered" in line and "within 2 s" in line
    assert elapsed < 2 + 8  # the timeout plus the interpreter's start-up
    assert server.accepted, "the probe never reached the server"
    assert not out.exists()


@pytest.mark.skipif(not HAS_DASK, reason="needs the dask extra")
def test_dask_probe_leaves_no_threads(tmp_path):
    """In process: the probe times out and leaves no thread or event loop behind."""
    from sim.sweep.execute import probe_scheduler

    server = SilentServer()
    before = set(threading.enumerate())
    try:
        started = time.monotonic()
        with pytest.raises(UserError, match="no Dask scheduler answered"):
            probe_scheduler(f"tcp://127.0.0.1:{server.port}", 0.5)
        assert time.monotonic() - started < 3
    finally:
        server.close()
    assert set(threading.enumerate()) - before == set()


@pytest.mark.skipif(not HAS_DASK, reason="needs the dask extra")
def test_dask_refused_is_one_line():
    from sim.sweep.execute import probe_scheduler

    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(UserError, match=r"--dask: (cannot connect|no Dask scheduler)"):
            probe_scheduler(f"tcp://127.0.0.1:{port}", 2)


# --- sweep size ------------------------------------------------------------------------------


def spec(**body) -> SweepSpec:
    return SweepSpec(name="t", base={}, **body)


def test_sweep_size_counts_without_expanding():
    big = {"start": 0, "stop": 1, "num": 10**4}
    grid = {"a": big, "b": big, "c": list(range(10**4))}
    with pytest.raises(UserError, match=r"s\.yaml: the sweep expands to 1,000,000,000,000 points"):
        check_size(spec(grid=grid), "s.yaml", 1)


def test_sweep_size_bounds_points_and_tasks():
    ok = spec(grid={"a": list(range(100)), "b": list(range(100))})
    assert check_size(ok, "s.yaml", MAX_TASKS // MAX_POINTS) == (MAX_POINTS, MAX_TASKS)
    with pytest.raises(UserError, match=r"10,001 points"):
        check_size(spec(grid={"a": list(range(MAX_POINTS + 1))}), "s.yaml", 1)
    with pytest.raises(UserError, match=r"5,000 points and 150,000 tasks"):
        check_size(spec(grid={"a": list(range(5000))}), "s.yaml", 30)


def test_sweep_zip_lengths_must_match():
    with pytest.raises(UserError, match="zip factors must have the same number of values"):
        check_size(spec(zip={"a": [1, 2], "b": [1, 2, 3]}), "s.yaml", 1)


def test_anchor_bomb_grid_fails_before_anything_runs(tmp_path, capsys):
    """Ten aliases of a 10-value list: 10^10 points, refused at once, nothing written."""
    write_yaml(tmp_path / "base.yaml", BASE)
    grid = "\n".join(f"  f{i}: *v" for i in range(1, 10))
    (tmp_path / "bomb.yaml").write_text(
        f"name: bomb\nbase: base.yaml\ngrid:\n  f0: &v [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n{grid}\n"
    )
    out = tmp_path / "out"
    started = time.monotonic()
    code = main(["sweep", str(tmp_path / "bomb.yaml"), "-o", str(out), "--quiet"])
    assert time.monotonic() - started < 5
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "bomb.yaml" in line  # refused by the size bound or the YAML loader's alias limit
    assert not out.exists()


def test_big_grid_fails_before_anything_runs(tmp_path, capsys):
    """Five 10-value factors: 100,000 points, refused at once naming the file and sizes."""
    sweep = make_sweep(tmp_path, grid={f"f{i}": list(range(10)) for i in range(5)})
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "-o", str(out), "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "sweep.yaml: the sweep expands to 100,000 points and 100,000 tasks" in line
    assert not out.exists()


# --- arrivals per replication ------------------------------------------------------------------


def scenario(tmp_path: Path, **changes) -> Path:
    """BASE with `changes` (dotted keys) written to tmp_path/scenario.yaml."""
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in changes.items():
        *head, last = key.split(".")
        node = raw
        for part in head:
            node = node[part]
        node[last] = value
    return write_yaml(tmp_path / "scenario.yaml", raw)


@pytest.mark.parametrize(
    ("arrival", "fields"),
    [
        ({"kind": "poisson", "rate_per_s": 36000.0}, "workload.arrival.rate_per_s x duration_s"),
        ({"kind": "poisson", "per_client_rate_per_s": 36000.0},
         "workload.arrival.per_client_rate_per_s x clients x duration_s"),
        ({"kind": "poisson", "load": 5.0},
         "workload.arrival.load x the server-only capacity x duration_s"),
    ],
)  # fmt: skip
def test_arrivals_bounded_before_simulating(arrival, fields, tmp_path, capsys):
    """rate x duration far above the bound: one line naming the fields, at once."""
    path = scenario(tmp_path, requests=None, duration_s=1e6, **{"workload.arrival": arrival})
    started = time.monotonic()
    code = main(["run", str(path), "-o", str(tmp_path / "out"), "--quiet"])
    assert time.monotonic() - started < 5
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{fields} (" in line and "arrivals; at most 1e7 per replication" in line
    assert not (tmp_path / "out").exists()  # refused before any folder is made


def test_arrivals_bound_message_and_limit():
    from sim.config import load_scenario
    from sim.engine.workload import MAX_ARRIVALS, check_arrivals

    assert MAX_ARRIVALS == 10_000_000
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        ld = load_scenario(
            Path("scenarios/examples/quickstart.yaml"), ["requests=null", "duration_s=1000000"]
        )
    check_arrivals(ld, 10.0)  # 1e7 expected: at the bound, allowed
    with pytest.raises(UserError, match=r"\(36000/s x 1e6 s\) gives about 3\.6e10 arrivals"):
        check_arrivals(ld, 36000.0)


def test_capacity_search_stops_cleanly_at_the_arrival_bound(tmp_path, capsys):
    """A capacity search whose rates bring too many arrivals: a recorded error, no hang."""
    path = scenario(
        tmp_path, requests=None, duration_s=10000,
        **{"workload.mix": [{**BASE["workload"]["mix"][0],
                             "service_s": {"kind": "exponential", "mean": 1e-4}}]},
    )  # fmt: skip
    out = tmp_path / "cap"
    started = time.monotonic()
    code = main(["capacity", str(path), "-o", str(out), "--jobs", "1", "--quiet"])
    assert time.monotonic() - started < 10
    assert code == 1
    error = (out / "capacity.csv").read_text()
    assert "capacity search of server_only at" in error
    assert "arrivals; at most 1e7 per replication" in error


# --- overload stop (simulation.max_in_flight) ----------------------------------------------


def overloaded(cap: int | None, granularity: str = "request", **extra):
    """The quickstart scenario at 5 x the server-only capacity for 20 s, one policy."""
    from sim.config import load_scenario

    sets = ["requests=null", "duration_s=20", "warmup_s=0", "workload.arrival.rate_per_s=null",
            "workload.arrival.load=5", "policies=[server_only]",
            f"simulation.max_in_flight={'null' if cap is None else cap}"]  # fmt: skip
    if granularity == "token":
        path = REPO / "scenarios/examples/batching_chat.yaml"
        sets = ["requests=null", "duration_s=20", "warmup_s=0", "policies=[server_only]",
                f"simulation.max_in_flight={'null' if cap is None else cap}"]  # fmt: skip
    else:
        path = REPO / "scenarios/examples/quickstart.yaml"
    sets += [f"{k}={v}" for k, v in extra.items()]
    return load_scenario(path, sets)


def test_max_in_flight_default_is_large_and_bounded():
    from sim.config.scenario import SimulationConfig

    field = SimulationConfig.model_fields["max_in_flight"]
    assert field.default == 100_000


@pytest.mark.parametrize("granularity", ["request", "token"])
def test_overload_stop_reports_and_counts_misses(granularity):
    from sim.runner import simulate

    cap = 300
    ld = overloaded(cap, granularity)
    if granularity == "token":  # a rate far above what the batching server sustains
        ld = overloaded(cap, "token", **{"workload.arrival.rate_per_s": 200})
    result = simulate(ld)
    row = result.summary.iloc[0]
    rows = result.requests
    stop = row["overload_stop_s"]
    assert 0 < stop < 20
    # the run stopped when the cap was reached (token mode: a request leaves the count
    # when its last token is computed, which may lie a little after the stop)
    assert row["backlog_at_stop"] == cap or (
        granularity == "token" and row["backlog_at_stop"] > cap
    )
    assert rows["arrival_s"].max() <= stop  # no arrival after the stop
    in_flight = rows["status"] == "in_flight"
    assert in_flight.sum() == row["in_flight_at_end"] > 0
    assert not rows.loc[in_flight, "sla_met"].any()  # in flight: an SLA miss
    assert row["completed"] + row["rejected"] + row["in_flight_at_end"] == len(rows)
    assert row["duration_s"] == pytest.approx(stop)  # no drain


@pytest.mark.parametrize("granularity", ["request", "token"])
def test_below_the_cap_nothing_changes(granularity):
    """A run that never reaches the cap is identical to one without it."""
    from sim.runner import simulate

    extra = {"requests": 300, "duration_s": "null", "workload.arrival.load": 0.5}
    if granularity == "token":
        extra = {"requests": 60, "duration_s": "null"}
    capped = simulate(overloaded(100_000, granularity, **extra))
    free = simulate(overloaded(None, granularity, **extra))
    assert capped.summary["overload_stop_s"].isna().all()
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(capped.requests, free.requests)
    pd_testing.assert_frame_equal(capped.summary, free.summary)
    pd_testing.assert_frame_equal(capped.timeseries, free.timeseries)


def test_overload_stop_in_the_result_folder(tmp_path, capsys):
    path = REPO / "scenarios/examples/quickstart.yaml"
    out = tmp_path / "run"
    code = main(["run", str(path), "-o", str(out), "--quiet", "--set", "requests=null",
                 "--set", "duration_s=20", "--set", "warmup_s=0",
                 "--set", "workload.arrival.rate_per_s=null", "--set", "workload.arrival.load=5",
                 "--set", "simulation.max_in_flight=200", "--set", "policies=[server_only]"])  # fmt: skip
    assert code == 0
    import pandas as pd

    summary = pd.read_csv(out / "summary.csv")
    assert summary["overload_stop_s"].notna().all()
    assert (pd.read_csv(out / "requests.csv")["status"] == "in_flight").sum() == 200


@pytest.mark.parametrize("value", ["0", "-5", "100000001", "1.5"])
def test_max_in_flight_range(value, tmp_path, capsys):
    path = REPO / "scenarios/examples/quickstart.yaml"
    code = main(["check", str(path), "--set", f"simulation.max_in_flight={value}"])
    assert code == 2
    assert "simulation.max_in_flight" in one_error_line(capsys.readouterr().err)
