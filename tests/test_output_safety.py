"""Result folders and output paths: nothing on disk is lost, replaced by mistake or half-written.

A folder is replaced only when it is recognisably this tool's (run manifest, sweep.json,
paper.json); a failed run never costs a finished result; output paths are checked before
any simulation; a killed run's temporaries are cleaned by the next run (never a live one's).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fsnap import snapshot

from sim.atomic import atomic_write_text, owner_tag, stale_owner, temp_prefix
from sim.cli import main
from sim.errors import UserError
from sim.output import remove_stale_siblings
from sim.paper.reproduce import claim_out, is_paper_folder
from sim.sweep.store import SweepStore

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "scenarios" / "examples" / "quickstart.yaml"
HOST = owner_tag().rpartition("-")[0]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_PROC = Path("/proc/self").is_dir()

SCENARIO: dict = {
    "name": "safe",
    "seed": 1,
    "requests": 40,
    "policies": ["server_only", "dp"],
    "server": {"device": "a100-80gb", "slots": 1},
    "clients": [{"name": "c", "count": 2, "device": "phone-flagship",
                 "link": {"uplink_mbps": 50, "downlink_mbps": 200, "rtt_ms": 20}}],
    "workload": {
        "arrival": {"kind": "poisson", "rate_per_s": 5},
        "mix": [{"name": "job", "task": "synthetic", "deadline_s": 1.0,
                 "service_s": {"kind": "exponential", "mean": 0.05}}],
    },
}  # fmt: skip


# --- helpers


def write_scenario(where: Path, **changes) -> Path:
    path = where / "scenario_in.yaml"
    path.write_text(yaml.safe_dump({**SCENARIO, **changes}, sort_keys=False))
    return path


def write_sweep(where: Path, **changes) -> Path:
    base = write_scenario(where, **changes)
    sweep = where / "sweep_in.yaml"
    grid = {"workload.arrival.rate_per_s": [4.0, 5.0]}
    sweep.write_text(yaml.safe_dump({"name": "safe-sweep", "base": base.name, "grid": grid}))
    return sweep


def one_error_line(capsys, *fragments: str, prefix: str = "splitsim: error: ") -> str:
    """The single stderr line (stdout empty), checked for `fragments`."""
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"not exactly one line: {err!r}"
    assert err.startswith(prefix), err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return err


def dead_pid() -> int:
    """The id of a process that has exited (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def run_ok(scenario: Path, out: Path, *extra: str) -> None:
    assert main(["run", str(scenario), "-o", str(out), "--quiet", *extra]) == 0


@pytest.fixture
def no_simulation(monkeypatch):
    """Any simulation or sweep execution fails the test: paths must be checked first."""
    import sim.runner
    import sim.sweep.run

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(sim.runner, "simulate", forbidden)
    for name in ("run_local", "run_dask"):
        if hasattr(sim.sweep.run, name):
            monkeypatch.setattr(sim.sweep.run, name, forbidden)


# --- 1. only this tool's folders are replaced


def test_run_refuses_a_folder_whose_manifest_is_another_tools(tmp_path, capsys):
    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text('{"name": "app"}\n')
    (app / "src" / "main.js").write_text("code\n")
    before = snapshot(tmp_path)
    scenario = write_scenario(tmp_path)
    after_scenario = snapshot(tmp_path)

    assert main(["run", str(scenario), "-o", str(app), "--quiet"]) == 2
    one_error_line(capsys, f"{app}: ", "not a splitsim result")
    assert snapshot(tmp_path) == after_scenario
    assert {k: v for k, v in after_scenario.items() if k in before} == before


def test_run_manifest_says_package_and_kind_and_a_rerun_replaces_it(tmp_path, capsys):
    scenario = write_scenario(tmp_path)
    out = tmp_path / "r"
    run_ok(scenario, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["package"], manifest["kind"], manifest["status"]) == ("splitsim", "run", "ok")
    run_ok(scenario, out, "--set", "seed=2")
    assert json.loads((out / "manifest.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "scenario_in.yaml"]
    capsys.readouterr()


def test_run_replaces_a_result_of_an_older_version_without_kind(tmp_path, capsys):
    scenario = write_scenario(tmp_path)
    out = tmp_path / "r"
    run_ok(scenario, out)
    old = json.loads((out / "manifest.json").read_text())
    del old["kind"]
    (out / "manifest.json").write_text(json.dumps(old))
    run_ok(scenario, out, "--set", "seed=3")
    assert json.loads((out / "manifest.json").read_text())["kind"] == "run"
    capsys.readouterr()


def test_sweep_fresh_never_deletes_tasks_of_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    out = tmp_path / "other"
    (out / "tasks").mkdir(parents=True)
    (out / "sweep.json").write_text('{"name": "someone else"}\n')
    (out / "tasks" / "keep.json").write_text("mine\n")
    before = snapshot(out)
    sweep = write_sweep(tmp_path)
    assert main(["sweep", str(sweep), "-o", str(out), "--fresh", "--quiet", "--jobs", "1"]) == 2
    one_error_line(capsys, f"{out}: ", "not a splitsim sweep")
    assert snapshot(out) == before


def test_sweep_store_marks_its_folder_and_accepts_an_older_sweep_json(tmp_path):
    out = tmp_path / "s"
    SweepStore(out, "abc", {"name": "s", "points": 1, "tasks": 1}, fresh=False)
    meta = json.loads((out / "sweep.json").read_text())
    assert (meta["package"], meta["kind"], meta["content_hash"]) == ("splitsim", "sweep", "abc")
    # an older sweep.json (no package, no kind) is still recognised; --fresh may clear it
    (out / "sweep.json").write_text(json.dumps({"name": "s", "points": 1, "tasks": 1,
                                                "content_hash": "old"}))  # fmt: skip
    (out / "tasks" / "t.json").write_text("{}")
    with pytest.raises(UserError, match="different sweep"):
        SweepStore(out, "abc", {"name": "s"}, fresh=False)
    SweepStore(out, "abc", {"name": "s"}, fresh=True)
    assert not (out / "tasks" / "t.json").exists()


def test_paper_refuses_a_folder_with_only_claims_md(tmp_path, capsys, no_simulation):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "claims.md").write_text("my own claims\n")
    (out / "allocation.csv").write_text("a,b\n")
    before = snapshot(tmp_path)
    assert main(["paper", "-o", str(out), "--quick", "--quiet"]) == 2
    one_error_line(capsys, f"{out}: ", "not a paper reproduction")
    assert snapshot(tmp_path) == before


def test_paper_accepts_an_earlier_reproduction_by_its_marker(tmp_path):
    assert is_paper_folder(REPO / "results" / "paper")  # the committed reproduction
    out = tmp_path / "paper"
    claim_out(out)  # new folder: marked
    (out / "claims.md").write_text("old\n")
    stale = out / f".allocation.csv.tmp-{HOST}-{dead_pid()}-abc"
    stale.write_text("partial")
    claim_out(out)  # an earlier reproduction: accepted, a killed one's temporary removed
    assert sorted(p.name for p in out.iterdir()) == ["claims.md", "paper.json"]
    assert json.loads((out / "paper.json").read_text())["kind"] == "paper"
    (out / "paper.json").write_text('{"package": "other"}')
    with pytest.raises(UserError, match="not a paper reproduction"):
        claim_out(out)


# --- 2. a failed run never costs a finished result


def test_failed_run_keeps_the_finished_result_and_records_the_failure_beside_it(
    tmp_path, capsys, monkeypatch
):
    import sim.runner

    scenario = write_scenario(tmp_path)
    out = tmp_path / "r"
    run_ok(scenario, out)
    capsys.readouterr()
    good = snapshot(out)

    def too_much(ld, progress=None, **_):
        raise UserError(f"{ld.source}: workload: the run needs too much memory")

    monkeypatch.setattr(sim.runner, "simulate", too_much)
    assert main(["run", str(scenario), "-o", str(out), "--quiet"]) == 2
    failed = tmp_path / "r.failed"
    one_error_line(capsys, "too much memory", f"recorded in {failed}/", f"{out}/ is kept")
    assert snapshot(out) == good
    manifest = json.loads((failed / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "too much memory" in manifest["error"]
    assert (failed / "scenario.yaml").is_file() and not (failed / "requests.csv").exists()

    monkeypatch.undo()  # a later good run supersedes the failure record
    run_ok(scenario, out)
    assert not failed.exists()
    capsys.readouterr()


def test_failed_run_into_a_new_folder_leaves_the_failed_manifest_there(
    tmp_path, capsys, monkeypatch
):
    import sim.runner

    def broken(ld, progress=None, **_):
        raise UserError("x: broken")

    monkeypatch.setattr(sim.runner, "simulate", broken)
    out = tmp_path / "new"
    assert main(["run", str(write_scenario(tmp_path)), "-o", str(out), "--quiet"]) == 2
    one_error_line(capsys, f"recorded in {out}/")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "scenario.yaml"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    assert not (tmp_path / "new.failed").exists()


def test_a_bug_is_one_internal_error_line_with_the_traceback_saved(tmp_path, capsys, monkeypatch):
    import sim.runner

    scenario = write_scenario(tmp_path)
    out = tmp_path / "r"
    run_ok(scenario, out)
    capsys.readouterr()
    good = snapshot(out)

    def bug(ld, progress=None, **_):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(sim.runner, "simulate", bug)
    assert main(["run", str(scenario), "-o", str(out), "--quiet"]) == 1
    manifest_path = tmp_path / "r.failed" / "manifest.json"
    one_error_line(
        capsys,
        "ZeroDivisionError: float division by zero",
        "a bug; please report it",
        f"traceback in {manifest_path}",
        prefix="splitsim: internal error: ",
    )
    assert snapshot(out) == good
    assert "ZeroDivisionError" in json.loads(manifest_path.read_text())["traceback"]

    monkeypatch.setenv("SPLITSIM_DEBUG", "1")  # the raw traceback on request
    with pytest.raises(ZeroDivisionError):
        main(["run", str(scenario), "-o", str(out), "--quiet"])
    assert snapshot(out) == good


def test_a_bug_outside_run_saves_its_traceback_to_a_file(tmp_path, capsys, monkeypatch):
    import analysis.plot

    def bug(*args, **kwargs):
        raise RuntimeError("plot bug\nsecond line")

    monkeypatch.setattr(analysis.plot, "plot_folder", bug)
    assert main(["plot", str(tmp_path)]) == 1
    err = one_error_line(capsys, "RuntimeError: plot bug second line", prefix="splitsim: internal")
    path = Path(re.search(r"traceback in (\S+?)\)", err).group(1))
    try:
        assert "RuntimeError: plot bug" in path.read_text()
    finally:
        path.unlink(missing_ok=True)


# --- 3. temporaries of dead runs are cleaned, never a live run's


def test_temporary_names_carry_host_and_pid(tmp_path):
    assert temp_prefix("r") == f".r.tmp-{HOST}-{os.getpid()}-"
    assert stale_owner(f".r.tmp-{HOST}-{dead_pid()}-abc", "r") is True
    assert stale_owner(f".r.tmp-{HOST}-{os.getpid()}-abc", "r") is False
    assert stale_owner(f".r.tmp-otherhost-{dead_pid()}-abc", "r") is False  # not ours to judge
    assert stale_owner(f".r.x.tmp-{HOST}-{dead_pid()}-abc", "r") is None  # another target
    atomic_write_text(tmp_path / "f.txt", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_next_run_removes_dead_runs_temporaries_but_not_live_ones(tmp_path, capsys):
    scenario = write_scenario(tmp_path)
    dead = tmp_path / f".r.tmp-{HOST}-{dead_pid()}-abcd1234"
    dead_old = tmp_path / f".r.old-{HOST}-{dead_pid()}-abcd1234"
    live = tmp_path / f".r.tmp-{HOST}-{os.getpid()}-abcd1234"
    elsewhere = tmp_path / f".r.tmp-otherhost-{dead_pid()}-abcd1234"
    for folder in (dead, live, elsewhere):
        folder.mkdir()
        (folder / "requests.csv").write_text("policy,partial")
    run_ok(scenario, tmp_path / "r")
    dead_old.mkdir()  # with r/ present, an old sibling is garbage
    run_ok(scenario, tmp_path / "r")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([live.name, elsewhere.name, "r", "scenario_in.yaml"])
    capsys.readouterr()


def test_an_old_result_moved_aside_by_a_killed_run_is_put_back(tmp_path, capsys):
    scenario = write_scenario(tmp_path)
    out = tmp_path / "r"
    run_ok(scenario, out)
    capsys.readouterr()
    good = snapshot(out)
    aside = tmp_path / f".r.old-{HOST}-{dead_pid()}-abcd1234"
    out.rename(aside)  # killed between "move old aside" and "move new in"
    remove_stale_siblings(out)
    assert snapshot(out) == good and not aside.exists()


def test_sweep_store_removes_dead_writers_temporaries_only(tmp_path):
    out = tmp_path / "s"
    SweepStore(out, "h", {"name": "s"}, fresh=False)
    tasks = out / "tasks"
    dead = tasks / f".p0-r0.json.tmp-{HOST}-{dead_pid()}-xyz"
    live = tasks / f".p0-r1.json.tmp-{HOST}-{os.getpid()}-xyz"
    legacy = tasks / ".p0-r2.json.abc123"  # an older version's temporary: no owner
    top = out / f".sweep.csv.tmp-{HOST}-{dead_pid()}-xyz"
    for path in (dead, live, legacy, top):
        path.write_text("{partial")
    SweepStore(out, "h", {"name": "s"}, fresh=False)
    assert [p.name for p in tasks.iterdir()] == [live.name]
    assert not top.exists()


def _wait_for_partial_write(root: Path, proc: subprocess.Popen, timeout_s: float) -> Path:
    """The temporary folder of `proc` once requests.csv is being written in it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        for tmp in root.glob(".out.tmp-*"):
            if (tmp / "requests.csv").exists():
                return tmp
        time.sleep(0.005)
    raise AssertionError(f"no write seen (exit status {proc.poll()})")


def test_run_killed_while_writing_leaves_nothing_the_rerun_does_not_clean(tmp_path, capsys):
    """A real run (~5 s: 60k request rows) is SIGKILLed while requests.csv is written."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["run", str(QUICKSTART), "--set", "requests=20000", "-o", str(out), "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "sim", *args], cwd=tmp_path, env=env)
    try:
        tmp = _wait_for_partial_write(tmp_path, proc, timeout_s=60)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert tmp.is_dir() and not (tmp / "manifest.json").exists()  # killed mid-write
    assert not out.exists()

    run_ok(QUICKSTART, out, "--set", "requests=200")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "ok"
    names = {p.name for p in out.iterdir()}
    assert {"scenario.yaml", "requests.csv", "summary.csv", "summary.json"} <= names
    capsys.readouterr()


# --- 4. output paths are checked before any work, in one line, touching nothing


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc")
@pytest.mark.parametrize("command", ["run", "sweep", "capacity", "paper"])
def test_unwritable_output_fails_before_any_work(command, tmp_path, capsys, no_simulation):
    target = "/proc/splitsim-test-x"
    if command == "run":
        argv = ["run", str(write_scenario(tmp_path)), "-o", target, "--quiet"]
    elif command == "sweep":
        argv = ["sweep", str(write_sweep(tmp_path)), "-o", target, "--quiet", "--jobs", "1"]
    elif command == "capacity":
        argv = ["capacity", str(write_scenario(tmp_path)), "-o", target, "--quiet", "--jobs", "1"]
    else:
        argv = ["paper", "-o", target, "--quick", "--quiet", "--jobs", "1"]
    assert main(argv) == 2
    one_error_line(capsys, f"{target}: ", "cannot write")
    assert not Path(target).exists()


@pytest.mark.parametrize("command", ["run", "sweep", "paper-file", "paper-below"])
def test_output_at_or_below_a_file_is_refused(command, tmp_path, capsys, no_simulation):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("precious\n")
    below = blocker / "sub"
    if command == "run":
        argv, target = ["run", str(write_scenario(tmp_path)), "-o", str(below), "--quiet"], below
    elif command == "sweep":
        sweep = write_sweep(tmp_path)
        argv, target = ["sweep", str(sweep), "-o", str(below), "--quiet", "--jobs", "1"], below
    elif command == "paper-file":
        argv, target = ["paper", "-o", str(blocker), "--quick", "--quiet"], blocker
    else:
        argv, target = ["paper", "-o", str(below), "--quick", "--quiet"], below
    before = snapshot(tmp_path)
    assert main(argv) == 2
    one_error_line(capsys, f"{target}: ", "not a folder")
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_output_under_a_read_only_folder_is_refused(tmp_path, capsys, no_simulation):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["run", str(write_scenario(tmp_path)), "-o", str(locked / "r")]) == 2
        one_error_line(capsys, f"{locked / 'r'}: ", "cannot write")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_plot_refuses_a_figures_path_that_is_a_file(tmp_path, capsys):
    scenario = write_scenario(tmp_path)
    out = tmp_path / "r"
    run_ok(scenario, out)
    capsys.readouterr()
    (out / "figures").write_text("not a folder\n")
    before = snapshot(out)
    assert main(["plot", str(out)]) == 2
    one_error_line(capsys, f"{out / 'figures'}: ", "not a folder")
    assert snapshot(out) == before


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_plot_refuses_a_missing_folder_or_a_file(kind, tmp_path, capsys):
    target = tmp_path / "nothing"
    if kind == "file":
        target.write_text("x\n")
    assert main(["plot", str(target)]) == 2
    one_error_line(capsys, f"{target}: ", "no such folder" if kind == "missing" else "not a folder")


@pytest.mark.skipif(IS_ROOT, reason="root reads unreadable folders")
def test_plot_refuses_an_unreadable_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o000)
    try:
        assert main(["plot", str(locked)]) == 2
        one_error_line(capsys, f"{locked}: ", "cannot read")
    finally:
        locked.chmod(0o755)


# --- 5. bad sweep/capacity input leaves no folder


def test_sweep_with_a_broken_base_makes_no_folder(tmp_path, capsys, no_simulation):
    sweep = write_sweep(tmp_path, server={"device": "no-such-gpu", "slots": 1})
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "-o", str(out), "--quiet", "--jobs", "1"]) == 2
    one_error_line(capsys, "no-such-gpu")
    assert not out.exists()


def test_capacity_with_an_unknown_policy_makes_no_folder(tmp_path, capsys, no_simulation):
    scenario = write_scenario(tmp_path)
    out = tmp_path / "out"
    argv = ["capacity", str(scenario), "--policy", "nope", "-o", str(out), "--quiet"]
    assert main(argv) == 2
    one_error_line(capsys, "--policy: ", "unknown policy 'nope'", "known: ")
    assert not out.exists()


# --- 6. default output paths stay inside runs/


@pytest.mark.parametrize("name", ["../escaped", "a/../../escaped", "/tmp/splitsim-escaped"])
def test_scenario_name_cannot_send_results_outside_runs(name, tmp_path, capsys, monkeypatch):
    from sim.output import default_output

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(UserError, match="would write outside runs/"):
        default_output(name, "s.yaml")
    # through the command line too (the schema may refuse such a name even earlier)
    scenario = write_scenario(tmp_path, name=name)
    assert main(["run", str(scenario), "--quiet"]) == 2
    one_error_line(capsys, str(scenario))
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenario_in.yaml", "work"]
    assert not Path("/tmp/splitsim-escaped").exists()


def test_a_too_long_name_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long_out = tmp_path / "runs" / ("a" * 300)
    assert main(["run", str(write_scenario(tmp_path)), "-o", str(long_out), "--quiet"]) == 2
    one_error_line(capsys, "file name too long")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("error", "status", "words"),
    [(KeyboardInterrupt, 130, "interrupted"), (MemoryError, 1, "out of memory")],
)
def test_interrupt_and_memory_exhaustion_are_one_line(error, status, words, tmp_path,
                                                      capsys, monkeypatch):  # fmt: skip
    import sim.runner

    scenario = write_scenario(tmp_path)
    out = tmp_path / "r"

    def stop(ld, progress=None, **_):
        raise error()

    monkeypatch.setattr(sim.runner, "simulate", stop)
    assert main(["run", str(scenario), "-o", str(out), "--quiet"]) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and words in err
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.")]
    assert not leftovers  # no temporary folder left behind


class _ClosedPipe:
    """A standard output whose reader has gone away (`splitsim ... | head`)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    """Output piped into a reader that stops early: no internal error, SIGPIPE's status."""
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    assert main(["catalog", "devices"]) == 141
    assert "internal error" not in capsys.readouterr().err
