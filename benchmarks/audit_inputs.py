"""Replay the hostile-input audit (issue 11) through the real command line and count.

Each case runs `python -m sim ...` in a fresh process inside a scratch folder, as a user
would, with a time limit, and is judged by the contract: exit status 2 (or 0 where the
input is valid and must run), exactly one line on stderr with no traceback that contains
the expected words, nothing on disk changed but what the case may write, and no hang.

    python benchmarks/audit_inputs.py            # prints one row per case and the totals

It is the audit of the issue in executable form; the pytest suites (test_bad_input,
test_schema_bounds, test_output_safety, test_bounds) test the same behaviours in-process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "scenarios" / "examples" / "quickstart.yaml"
TINY = """name: tiny
seed: 1
requests: 30
policies: [dp, server_only]
clients: [{name: c, count: 2, device: phone-flagship}]
workload:
  arrival: {kind: poisson, rate_per_s: 5}
  mix: [{name: x, model: gpt2, prompt_tokens: 64, deadline_factor: 4}]
"""


@dataclass
class Case:
    name: str
    argv: list[str]  # after `python -m sim`; {W} is the scratch folder
    expect: list[str] = field(default_factory=list)  # words the error line must hold
    status: int = 2
    setup: Callable[[Path], None] | None = None
    may_write: tuple[str, ...] = ()  # paths (relative to W) the case may create
    timeout_s: float = 60.0


def _tiny(w: Path, **edits: str) -> Path:
    text = TINY
    for key, value in edits.items():
        text += f"{key}: {value}\n" if key != "raw" else value
    path = w / "s.yaml"
    path.write_text(text)
    return path


def _scenario(extra: str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        (w / "s.yaml").write_text(TINY + extra)

    return setup


def _files(**files: str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        (w / "s.yaml").write_text(TINY)
        for name, text in files.items():
            (w / name.replace("__", ".")).write_text(text)

    return setup


def _web_app(w: Path) -> None:
    (w / "app" / "src").mkdir(parents=True)
    (w / "app" / "manifest.json").write_text('{"name": "app"}\n')
    (w / "app" / "src" / "main.js").write_text("code\n")


def _good_result(w: Path) -> None:
    (w / "s.yaml").write_text(TINY)
    subprocess.run([sys.executable, "-m", "sim", "run", "s.yaml", "-o", "r", "--quiet"],
                   cwd=w, check=True, capture_output=True)  # fmt: skip


def _bomb(w: Path) -> None:
    (w / "s.yaml").write_text(TINY)
    lines = ["name: s", "base: s.yaml", "a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (w / "sweep.yaml").write_text("\n".join([*lines, "grid:", "  seed: *a8"]) + "\n")


def _sweep(text: str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        (w / "s.yaml").write_text(TINY)
        (w / "sweep.yaml").write_text(f"name: sw\nbase: s.yaml\n{text}")

    return setup


def _file_named(name: str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        (w / "s.yaml").write_text(TINY)
        (w / name).write_text("precious\n")

    return setup


TRACE_HEAD = "arrived_at,num_prefill_tokens,num_decode_tokens\n"
TABLE_HEAD = "model,unit_kind,unit_index,device,phase,tokens,batch,seconds\n"
SOLVE = ["solve", "--model", "gpt2", "--client", "phone-flagship", "--server", "a100-80gb",
         "--uplink-mbps", "20", "--downlink-mbps", "100"]  # fmt: skip
DEVICE = "devices: {srv: {kind: server, peak_tflops: {fp16: 100}, memory_bandwidth_gb_s: 1000, memory_gb: 40"


def cases() -> list[Case]:
    run = ["run", "s.yaml", "-o", "out", "--quiet"]
    trace_arrivals = "workload:\n  arrival: {kind: trace, path: t.csv}\n  mix: [{name: x, model: gpt2, deadline_factor: 4}]\n"  # noqa: E501
    return [
        # data loss
        Case("run -o folder with a foreign manifest.json", ["run", "s.yaml", "-o", "app"],
             ["not a splitsim result"], setup=lambda w: (_web_app(w), (w / "s.yaml").write_text(TINY))),  # noqa: E501
        Case("crashing value over a finished result", ["run", "s.yaml", "-o", "r", "--set",
             "workload.arrival.rate_per_s=.inf"], ["rate_per_s"], setup=_good_result),
        # values that passed validation
        *[Case(f"--set {s}", [*run, "--set", s], [s.split("=")[0].split(".")[-1]], setup=_scenario(""))  # noqa: E501
          for s in ("workload.arrival.rate_per_s=.inf", "clients.0.link.rtt_ms=.inf",
                    "workload.mix.0.deadline_factor=1e-300", "workload.mix.0.weight=.inf",
                    "split.time_step_s=1e-12", "output.timeseries_bins=1e9", "requests=true",
                    "workload.mix.0.prompt_tokens=0", "duration_s=.inf")],
        Case("deadline_s: .inf", run, ["deadline_s"], setup=lambda w: (w / "s.yaml").write_text(
            TINY.replace("deadline_factor: 4", "deadline_s: .inf"))),
        Case("peak_tflops: {}", [*run, "--set", "server.device=srv"], ["peak_tflops"],
             setup=_scenario(DEVICE.replace("{fp16: 100}", "{}") + "}}\n")),
        Case("overhead_us: 1e300", [*run, "--set", "server.device=srv"], ["overhead_us"],
             setup=_scenario(DEVICE + ", overhead_us: 1e300}}\n")),
        *[Case(f"cost table seconds {v}", [*run, "--set", "server.device=srv"], ["seconds"],
               setup=lambda w, v=v: (_scenario(DEVICE + ", cost_table: t.csv}}\n")(w), (w / "t.csv").write_text(  # noqa: E501
                   TABLE_HEAD + f"gpt2,block,0,srv,forward,64,1,{v}\n")))
          for v in ("1e308", "inf")],
        Case("trace with an inf arrival", ["run", "t.yaml", "-o", "out"], ["arrived_at"],
             setup=lambda w: ((w / "t.yaml").write_text(TINY.split("workload:")[0].replace("requests: 30\n", "") + trace_arrivals),  # noqa: E501
                              (w / "t.csv").write_text(TRACE_HEAD + "0,10,5\ninf,20,5\n"))),
        Case("trace with a negative time", ["run", "t.yaml", "-o", "out"], ["'arrived_at'"],
             setup=lambda w: ((w / "t.yaml").write_text(TINY.split("workload:")[0].replace("requests: 30\n", "") + trace_arrivals),  # noqa: E501
                              (w / "t.csv").write_text(TRACE_HEAD + "-3,10,5\n1,20,5\n"))),
        Case("solve --deadline-s inf", [*SOLVE, "--tokens", "64", "--deadline-s", "inf"], ["--deadline-s"]),  # noqa: E501
        Case("solve --deadline-s nan", [*SOLVE, "--tokens", "64", "--deadline-s", "nan"], ["--deadline-s"]),  # noqa: E501
        Case("solve --uplink-mbps nan", [*SOLVE, "--tokens", "64", "--deadline-s", "1", "--uplink-mbps=nan"], ["--uplink-mbps"]),  # noqa: E501
        Case("solve --time-step-s -1", [*SOLVE, "--tokens", "64", "--deadline-s", "1", "--time-step-s=-1"], ["--time-step-s"]),  # noqa: E501
        Case("solve --time-step-s 1e-12", [*SOLVE, "--tokens", "64", "--deadline-s", "1", "--time-step-s", "1e-12"], ["--time-step-s"]),  # noqa: E501
        Case("solve --tokens 1e9 on gpt2", [*SOLVE, "--tokens", "1000000000", "--deadline-s", "1"], ["--tokens"]),  # noqa: E501
        Case("solve --tokens 100000 on gpt2", [*SOLVE, "--tokens", "100000", "--deadline-s", "1"], ["1024 positions"]),  # noqa: E501
        Case("duplicate YAML key", run, ["duplicate key"], setup=_scenario("seed: 2\n")),
        Case("layers: 1e9", run, ["layers"], setup=lambda w: (w / "s.yaml").write_text(
            TINY.replace("model: gpt2", "model: big") + "models: {big: {architecture: decoder, layers: 1e9, "
            "hidden_size: 64, heads: 4, mlp_size: 128, mlp_kind: gelu, vocab_size: 100, max_positions: 512}}\n")),  # noqa: E501
        Case("capacity --replications 0", ["capacity", "s.yaml", "-o", "out", "--replications", "0"], ["--replications"], setup=_scenario("")),  # noqa: E501
        Case("capacity --replications -1", ["capacity", "s.yaml", "-o", "out", "--replications=-1"], ["--replications"], setup=_scenario("")),  # noqa: E501
        Case("capacity --max-utilization 0", ["capacity", "s.yaml", "-o", "out", "--max-utilization", "0"], ["--max-utilization"], setup=_scenario("")),  # noqa: E501
        Case("capacity --max-sla-violation-rate 2", ["capacity", "s.yaml", "-o", "out", "--max-sla-violation-rate", "2"], ["--max-sla-violation-rate"], setup=_scenario("")),  # noqa: E501
        Case("capacity --rel-tol 0", ["capacity", "s.yaml", "-o", "out", "--rel-tol", "0"], ["--rel-tol"], setup=_scenario("")),  # noqa: E501
        Case("capacity --policy UNKNOWN", ["capacity", "s.yaml", "-o", "out", "--policy", "UNKNOWN"], ["UNKNOWN"], setup=_scenario("")),  # noqa: E501
        Case("catalog models --scenario BAD", ["catalog", "models", "--scenario", "bad.yaml"], ["bad.yaml"], setup=lambda w: (w / "bad.yaml").write_text("clients: [\n")),  # noqa: E501
        # unbounded work
        Case("sweep --jobs 100000", ["sweep", "sweep.yaml", "-o", "out", "--jobs", "100000"], ["--jobs"], setup=_sweep("grid: {seed: [1, 2]}\n")),  # noqa: E501
        Case("sweep anchor bomb", ["sweep", "sweep.yaml", "-o", "out"], ["expands"], setup=_bomb),  # noqa: E501
        Case("sweep range num: 0", ["sweep", "sweep.yaml", "-o", "out"], ["num"], setup=_sweep("grid:\n  seed: {start: 1, stop: 3, num: 0}\n")),  # noqa: E501
        Case("sweep with a broken base", ["sweep", "sweep.yaml", "-o", "out"], ["sweep.yaml"], setup=lambda w: ((w / "s.yaml").write_text("clients: 3\n"), (w / "sweep.yaml").write_text("name: sw\nbase: s.yaml\ngrid: {seed: [1]}\n"))),  # noqa: E501
        Case("--dask 'not an address'", ["sweep", "sweep.yaml", "-o", "out", "--dask", "not an address"], ["--dask"], setup=_sweep("grid: {seed: [1]}\n")),  # noqa: E501
        Case("--dask at a silent TCP server", ["sweep", "sweep.yaml", "-o", "out", "--dask", "tcp://127.0.0.1:{PORT}", "--dask-timeout-s", "3"], ["--dask"], setup=_sweep("grid: {seed: [1]}\n"), timeout_s=30),  # noqa: E501
        Case("quickstart at 5x capacity for 120 s (valid: runs, bounded)", ["run", str(QUICK), "-o", "out", "--quiet", "--set", "requests=null", "--set", "duration_s=120", "--set", "workload.arrival.rate_per_s=null", "--set", "workload.arrival.load=5", "--set", "policies=[server_only]"], status=0, may_write=("out",), timeout_s=300),  # noqa: E501
        # paths and messages
        Case("run -o /proc/x", ["run", "s.yaml", "-o", "/proc/x"], ["/proc/x"], setup=_scenario("")),  # noqa: E501
        Case("sweep -o /proc/x", ["sweep", "sweep.yaml", "-o", "/proc/x"], ["/proc/x"], setup=_sweep("grid: {seed: [1]}\n")),  # noqa: E501
        Case("paper -o /proc/x", ["paper", "--quick", "-o", "/proc/x"], ["/proc/x"]),
        Case("paper -o FILE", ["paper", "--quick", "-o", "f.txt"], ["f.txt"], setup=_file_named("f.txt")),  # noqa: E501
        Case("paper -o FILE/sub", ["paper", "--quick", "-o", "f.txt/sub"], ["f.txt"], setup=_file_named("f.txt")),  # noqa: E501
        Case("run -o FILE/sub", ["run", "s.yaml", "-o", "f.txt/sub"], ["f.txt"], setup=_file_named("f.txt")),  # noqa: E501
        Case("plot DIR where DIR/figures is a file", ["plot", "r"], ["figures"], setup=lambda w: (_good_result(w), (w / "r" / "figures").write_text("not a folder\n"))),  # noqa: E501
        Case("300-character name", ["run", "s.yaml"], ["name"], setup=lambda w: (w / "s.yaml").write_text(TINY.replace("name: tiny", "name: " + "x" * 300))),  # noqa: E501
        Case("name: ../escaped", ["run", "s.yaml"], ["name"], setup=lambda w: (w / "s.yaml").write_text(TINY.replace("name: tiny", "name: ../escaped"))),  # noqa: E501
    ]  # fmt: skip


def _snapshot(root: Path) -> dict[str, bytes | None]:
    out = {}
    for p in sorted(root.rglob("*")):
        try:
            out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() else None
        except OSError:
            out[str(p.relative_to(root))] = b"?"
    return out


class _SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a non-Dask service)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


def judge(case: Case, work: Path, port: int) -> tuple[bool, str, float, float]:
    """(clean, why, wall s, peak child RSS MB) of one case run in `work`."""
    if case.setup:
        case.setup(work)
    before = _snapshot(work)
    argv = [a.replace("{PORT}", str(port)) for a in case.argv]
    cmd = [sys.executable, "-c",
           "import resource, runpy, sys; sys.argv = ['splitsim'] + sys.argv[1:];"
           "code = 0\ntry: runpy.run_module('sim', run_name='__main__')\n"
           "except SystemExit as e: code = e.code if isinstance(e.code, int) else 1\n"
           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)",  # noqa: E501
           *argv]  # fmt: skip
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True,
                              timeout=case.timeout_s, env={**os.environ, "MPLBACKEND": "Agg"})  # fmt: skip
    except subprocess.TimeoutExpired:
        return False, f"still running after {case.timeout_s:g} s", case.timeout_s, float("nan")
    wall = time.perf_counter() - t0
    *lines, rss = proc.stderr.strip().splitlines() or ["0"]
    rss_mb = int(rss) / 1024 if rss.isdigit() else float("nan")
    err_lines = [ln for ln in lines if ln.strip()]
    problems = []
    if proc.returncode != case.status:
        problems.append(f"exit {proc.returncode}")
    if "Traceback" in proc.stderr:
        problems.append("traceback")
    if case.status == 2:
        if len(err_lines) != 1:
            problems.append(f"{len(err_lines)} lines on stderr")
        missing = [w for w in case.expect if not any(w in ln for ln in err_lines)]
        if missing:
            problems.append(f"no {missing!r} in {err_lines[:1]}")
    after = _snapshot(work)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    changed = {
        k for k in changed if not any(k == m or k.startswith(m + "/") for m in case.may_write)
    }  # noqa: E501
    if changed:
        problems.append(f"disk changed: {sorted(changed)[:3]}")
    shown = err_lines[0] if err_lines else ""
    return not problems, "; ".join(problems) or shown, wall, rss_mb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    args = parser.parse_args()
    server = _SilentServer()
    rows = []
    try:
        for case in cases():
            if args.k not in case.name:
                continue
            work = Path(tempfile.mkdtemp(prefix="audit-"))
            try:
                clean, why, wall, rss = judge(case, work, server.port)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            rows.append((case.name, clean, why, wall, rss))
            mark = "clean" if clean else "NOT CLEAN"
            print(f"{mark:9}  {wall:6.1f} s  {rss:6.0f} MB  {case.name}: {why[:150]}", flush=True)
    finally:
        server.close()
    n_clean = sum(r[1] for r in rows)
    print(f"\n{len(rows)} cases tried, {n_clean} clean, {len(rows) - n_clean} not clean")
    return 0 if n_clean == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
