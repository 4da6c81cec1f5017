"""Bad input through the real command line: one line, exit status 2, nothing on disk lost.

Each row of `CASES` is a broken scenario (or a broken `--set`). It is run with
`splitsim run` twice -- into a folder that does not exist and into an existing complete
result folder -- and with `splitsim check`. Every time: exit status 2, nothing on stdout,
exactly one line on stderr naming the scenario file (and the field, where there is one),
no traceback; the new folder is not created and the old result is unchanged byte for byte.
A few rows also go through `python -m sim` in a fresh process.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from fsnap import snapshot

from sim.cli import main

# A small valid scenario; every case breaks one thing in it.
BASE: dict = {
    "name": "bad",
    "seed": 1,
    "requests": 20,
    "policies": ["dp", "server_only"],
    "server": {"device": "a100-80gb", "slots": 1},
    "clients": [
        {
            "name": "phones",
            "count": 2,
            "device": "phone-flagship",
            "link": {"uplink_mbps": 50, "downlink_mbps": 200, "rtt_ms": 20},
        }
    ],
    "workload": {
        "arrival": {"kind": "poisson", "rate_per_s": 5},
        "mix": [
            {
                "name": "score",
                "model": "gpt2",
                "task": "forward",
                "prompt_tokens": 128,
                "deadline_factor": 4,
            }
        ],
    },
}

DELETE = object()


def edit(*changes: tuple[str, object]) -> Callable[[], dict]:
    """BASE with dotted-path changes (list items by index); DELETE removes a key."""

    def build() -> dict:
        raw = copy.deepcopy(BASE)
        for dotted, value in changes:
            *parents, last = dotted.split(".")
            node = raw
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if value is DELETE:
                del node[last]
            elif isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value
        return raw

    return build


@dataclass
class Case:
    id: str
    scenario: Callable[[], dict] | str | bytes | None  # None: the file does not exist
    expect: list[str]  # fragments of the error line (after "splitsim: error: FILE: ")
    args: list[str] = field(default_factory=list)  # extra arguments, e.g. --set
    files: dict[str, str] = field(default_factory=dict)  # files next to the scenario
    marks: tuple = ()


HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None
GOOD_DEVICE = {
    "kind": "server",
    "peak_tflops": {"fp16": 100},
    "memory_bandwidth_gb_s": 1000,
    "memory_gb": 40,
}
TINY_MODEL = {
    "architecture": "decoder",
    "layers": 2,
    "hidden_size": 64,
    "heads": 3,
    "kv_heads": 2,
    "mlp_size": 128,
    "mlp_kind": "gelu",
    "vocab_size": 1000,
    "max_positions": 512,
}

CASES = [
    # --- the scenario file itself
    Case("file_not_found", None, ["file not found"]),
    Case("binary_file", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x80", ["not a text file"]),
    Case("control_chars", "name: x\x00\x01\n", ["not valid YAML"]),
    Case("colons", ": : :\n", ["not valid YAML (line 1)"]),
    Case("yaml_list", "- name: a\n- name: b\n", ["expected a mapping"]),
    Case("yaml_scalar", "42\n", ["expected a mapping"]),
    Case("empty_file", "", ["expected a mapping"]),
    # --- keys and names
    Case(
        "unknown_top_level_key",
        edit(("colour", "red")),
        ["(top level)", "unknown key 'colour'", "valid keys:", "clients", "workload"],
    ),
    Case(
        "misspelt_nested_key",
        edit(("clients.0.link", {"uplink_mpbs": 50, "downlink_mbps": 200})),
        ["clients.0.link", "unknown key 'uplink_mpbs'", "valid keys:", "uplink_mbps"],
    ),
    Case(
        "misspelt_policy",
        edit(("policies", ["dp", "greedyy"])),
        ["policies.1", "unknown policy 'greedyy'", "known:", "greedy", "server_only"],
    ),
    Case(
        "unknown_model",
        edit(("workload.mix.0.model", "gpt5")),
        ["workload.mix.0.model", "unknown model 'gpt5'", "known:", "gpt2-medium"],
    ),
    Case(
        "unknown_client_device",
        edit(("clients.0.device", "iphone-99")),
        ["clients.0.device", "unknown device 'iphone-99'", "known:", "phone-flagship"],
    ),
    Case(
        "unknown_server_device",
        edit(("server.device", "dgx-9000")),
        ["server.device", "unknown device 'dgx-9000'", "a100-80gb"],
    ),
    Case(
        "duplicate_client_names",
        edit(("clients", [{"name": "a"}, {"name": "a", "count": 3}])),
        ["clients", "client group names must be unique"],
    ),
    Case(
        "bad_discipline",
        edit(("server.discipline", "lifo")),
        ["server.discipline", "'fifo' or 'edf'"],
    ),
    Case(
        "unknown_distribution",
        edit(("workload.mix.0.prompt_tokens", {"kind": "gamma", "shape": 2})),
        ["workload.mix.0.prompt_tokens", "'gamma'", "lognormal"],
    ),
    # --- values out of range
    Case(
        "negative_rate",
        edit(("workload.arrival.rate_per_s", -5)),
        ["workload.arrival.rate_per_s", "> 0"],
    ),
    Case(
        "zero_rate",
        edit(("workload.arrival.rate_per_s", 0)),
        ["workload.arrival.rate_per_s", "> 0"],
    ),
    Case("empty_mix", edit(("workload.mix", [])), ["workload.mix", "at least 1 item"]),
    Case(
        "deadline_zero",
        edit(("workload.mix.0.deadline_factor", DELETE), ("workload.mix.0.deadline_s", 0)),
        ["workload.mix.0.deadline_s", ">= 1e-06"],
    ),
    Case(
        "both_deadlines",
        edit(("workload.mix.0.deadline_s", 1.0)),
        ["workload.mix.0", "exactly one of deadline_s, deadline_factor"],
    ),
    Case(
        "no_deadline",
        edit(("workload.mix.0.deadline_factor", DELETE)),
        ["workload.mix.0", "exactly one of deadline_s, deadline_factor"],
    ),
    Case("missing_stop_rule", edit(("requests", DELETE)), ["stop rule", "requests or duration_s"]),
    Case(
        "warmup_not_before_end",
        edit(("requests", DELETE), ("duration_s", 10), ("warmup_s", 10)),
        ["warmup_s must be shorter than duration_s"],
    ),
    Case(
        "generate_on_encoder",
        edit(
            ("workload.mix.0.model", "bert-base"),
            ("workload.mix.0.task", "generate"),
            ("workload.mix.0.output_tokens", 16),
        ),
        ["workload.mix.0.task", "'bert-base' cannot generate"],
    ),
    Case(
        "prompt_longer_than_context",
        edit(("workload.mix.0.model", "gpt2"), ("workload.mix.0.prompt_tokens", 5000)),
        ["workload.mix.0.prompt_tokens", "at most 1024 positions"],
    ),
    Case(
        "lognormal_negative_sigma",
        edit(("workload.mix.0.prompt_tokens", {"kind": "lognormal", "median": 100, "sigma": -1})),
        ["workload.mix.0.prompt_tokens", "sigma", ">= 0"],
    ),
    Case(
        "lognormal_min_above_max",
        edit(
            (
                "workload.mix.0.prompt_tokens",
                {"kind": "lognormal", "median": 100, "sigma": 1, "min": 500, "max": 10},
            )
        ),
        ["workload.mix.0.prompt_tokens.lognormal", "max must be >= min"],
    ),
    Case(
        "resident_first_negative",
        edit(("clients.0.resident", {"first": -1})),
        ["clients.0.resident", "{first: K}"],
    ),
    Case(
        "dp_batched_without_a_batching_server",
        edit(("policies", ["dp", "dp_batched"])),
        ["policies.1", "dp_batched plans for a batching server", "granularity: token"],
    ),
    Case(
        "phase_plans_without_the_token_engine",
        edit(("policies", ["dp_phases"])),
        ["policies.0", "dp_phases places prefill and decode apart", "granularity: token"],
    ),
    Case(
        "client_required_both_forms",
        edit(("workload.mix.0.client_required", {"first": 1, "units": ["embed"]})),
        ["workload.mix.0.client_required", "exactly one of first, units"],
    ),
    Case(
        "client_required_zero",
        edit(("workload.mix.0.client_required", {"first": 0})),
        ["workload.mix.0.client_required.first", ">= 1"],
    ),
    Case(
        "client_required_unknown_unit",
        edit(("workload.mix.0.client_required", {"units": ["embedding"]})),
        ["workload.mix.0.client_required.units", "no unit 'embedding'", "embed, block0"],
    ),
    Case(
        "client_required_beyond_the_model",
        edit(("workload.mix.0.client_required", {"first": 15})),
        ["workload.mix.0.client_required.first", "15 units pinned", "has 14"],
    ),
    Case(
        "client_required_not_resident",
        edit(("workload.mix.0.client_required", {"first": 1}), ("clients.0.resident", "none")),
        ["workload.mix.0.client_required", "client group 'phones'", "resident: none"],
    ),
    Case(
        "client_required_on_synthetic",
        edit(
            (
                "workload.mix.0",
                {
                    "name": "job",
                    "task": "synthetic",
                    "deadline_factor": 4,
                    "service_s": 0.01,
                    "client_required": {"first": 1},
                },
            ),
        ),  # fmt: skip
        ["workload.mix.0", "client_required needs a model"],
    ),
    Case(
        "parquet_without_pyarrow",
        edit(("output", {"format": "parquet"})),
        ["output.format", "pyarrow"],
        marks=(pytest.mark.skipif(HAS_PYARROW, reason="pyarrow is installed"),),
    ),
    Case(
        "inline_device_bad_value",
        edit(("server.device", {**GOOD_DEVICE, "memory_gb": -1})),
        ["server.device.memory_gb", "> 0"],
    ),
    Case(
        "inline_device_unknown_key",
        edit(("server.device", {**GOOD_DEVICE, "tflops": 3})),
        ["server.device", "unknown key 'tflops'", "valid keys:", "peak_tflops"],
    ),
    Case(
        "inline_model_bad_shape",
        edit(("models", {"tiny": TINY_MODEL}), ("workload.mix.0.model", "tiny")),
        ["models.tiny", "multiple of kv_heads"],
    ),
    # --- files the scenario names
    Case(
        "missing_trace_file",
        edit(("requests", DELETE), ("workload.arrival", {"kind": "trace", "path": "nope.csv"})),
        ["workload.arrival.path", "file not found", "nope.csv"],
    ),
    Case(
        "trace_wrong_columns",
        edit(("workload.arrival", {"kind": "trace", "path": "trace.csv"})),
        ["workload.arrival.path", "trace.csv", "arrived_at", "it has time, prompt, output"],
        files={"trace.csv": "time,prompt,output\n0.0,10,5\n1.0,20,5\n"},
    ),
    Case(
        "trace_missing_token_column",
        edit(("workload.arrival", {"kind": "trace", "path": "trace.csv"})),
        ["workload.arrival.path", "num_prefill_tokens", "prompt_tokens"],
        files={"trace.csv": "arrived_at,num_decode_tokens\n0.0,5\n1.0,5\n"},
    ),
    Case(
        "trace_not_numbers",
        edit(("workload.arrival", {"kind": "trace", "path": "trace.csv"})),
        ["workload.arrival.path", "num_prefill_tokens", "must hold integers >= 1", "'lots'"],
        files={"trace.csv": "arrived_at,num_prefill_tokens,num_decode_tokens\n0,10,5\n1,lots,5\n"},
    ),
    Case(
        "trace_nothing_after_start",
        edit(("workload.arrival", {"kind": "trace", "path": "trace.csv", "start_s": 100})),
        ["workload.arrival", "no trace rows to replay", "start_s 100"],
        files={"trace.csv": "arrived_at,num_prefill_tokens,num_decode_tokens\n0,10,5\n1,20,5\n"},
    ),
    Case(
        "bandwidth_time_not_increasing",
        edit(("clients.0.link.trace", "bw.csv")),
        ["clients.0.link.trace", "time_s must increase strictly"],
        files={"bw.csv": "time_s,uplink_mbps,downlink_mbps\n0,10,50\n5,8,40\n5,12,60\n"},
    ),
    Case(
        "bandwidth_wrong_columns",
        edit(("clients.0.link.trace", "bw.csv")),
        ["clients.0.link.trace", "uplink_mbps", "it has time_s, up, down"],
        files={"bw.csv": "time_s,up,down\n0,10,50\n5,8,40\n"},
    ),
    Case(
        "empirical_missing_column",
        edit(
            ("workload.mix.0.prompt_tokens", {"kind": "empirical", "path": "s.csv", "column": "n"})
        ),
        ["workload.mix.0.prompt_tokens.path", "one of n;", "it has tokens"],
        files={"s.csv": "tokens\n10\n20\n"},
    ),
    # --- the audit of issue 11: values that passed validation, then crashed or misled
    Case("duplicate_key", "name: a\nseed: 1\nname: b\n", ["duplicate key 'name'", "line 3"]),
    Case(
        "anchor_bomb",
        "a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 8)),
        ["expands to more than 1,000,000 values"],
    ),
    Case("requests_true", edit(("requests", True)), ["requests", "got True"]),
    Case(
        "rate_inf", edit(("workload.arrival.rate_per_s", float("inf"))), ["rate_per_s", "got inf"]
    ),
    Case("rtt_inf", edit(("clients.0.link.rtt_ms", float("inf"))), ["rtt_ms", "<= 60000"]),
    Case(
        "deadline_inf",
        edit(("workload.mix.0.deadline_factor", DELETE), ("workload.mix.0.deadline_s", "inf")),
        ["deadline_s", "<= 1000000"],
    ),
    Case(
        "deadline_factor_tiny",
        edit(("workload.mix.0.deadline_factor", 1e-300)),
        ["deadline_factor", ">= 0.01"],
    ),
    Case("weight_inf", edit(("workload.mix.0.weight", float("inf"))), ["weight", "got inf"]),
    Case("time_step_tiny", edit(("split", {"time_step_s": 1e-12})), ["time_step_s", ">= 1e-09"]),
    Case("bins_huge", edit(("output", {"timeseries_bins": 1e9})), ["timeseries_bins", "<= 100000"]),
    Case("duration_inf", edit(("duration_s", float("inf"))), ["duration_s", "got inf"]),
    Case(
        "prompt_zero",
        edit(("workload.mix.0.prompt_tokens", 0)),
        ["workload.mix.0.prompt_tokens", "must be an integer >= 1"],
    ),
    Case(
        "model_layers_huge",
        edit(("models", {"tiny": {**TINY_MODEL, "heads": 4, "layers": 1e9}})),
        ["models.tiny.layers", "<= 1024"],
    ),
    Case(
        "peak_tflops_empty",
        edit(("server.device", {**GOOD_DEVICE, "peak_tflops": {}})),
        ["server.device.peak_tflops", "at least 1 item"],
    ),
    Case(
        "overhead_absurd",
        edit(("server.device", {**GOOD_DEVICE, "overhead_us": 1e300})),
        ["server.device.overhead_us", "<= 1000000"],
    ),
    Case(
        "kernel_overhead_absurd",
        edit(("server.device", {**GOOD_DEVICE, "kernel_overhead_us": 1e300})),
        ["server.device.kernel_overhead_us", "<= 100000"],
    ),
    Case(
        "kernel_overhead_negative",
        edit(("server.device", {**GOOD_DEVICE, "kernel_overhead_us": -1})),
        ["server.device.kernel_overhead_us", ">= 0"],
    ),
    Case("name_escapes", edit(("name", "../escaped")), ["name", "letters, digits"]),
    Case("name_too_long", edit(("name", "x" * 300)), ["name", "1-100 letters"]),
    Case(
        "trace_inf_arrival",
        edit(("requests", DELETE), ("workload.arrival", {"kind": "trace", "path": "t.csv"})),
        ["workload.arrival.path", "column 'arrived_at'", "data row 2", "inf"],
        files={"t.csv": "arrived_at,num_prefill_tokens,num_decode_tokens\n0,10,5\ninf,20,5\n"},
    ),
    Case(
        "trace_negative_time_names_its_column",
        edit(("requests", DELETE), ("workload.arrival", {"kind": "trace", "path": "t.csv"})),
        ["column 'arrived_at' must hold numbers >= 0", "-3"],
        files={"t.csv": "arrived_at,num_prefill_tokens,num_decode_tokens\n-3,10,5\n1,20,5\n"},
    ),
    Case(
        "cost_table_inf_seconds",
        edit(("server.device", {**GOOD_DEVICE, "cost_table": "t.csv"})),
        ["server.device.cost_table", "column 'seconds'", "<= 3600"],
        files={
            "t.csv": "model,unit_kind,unit_index,device,phase,tokens,batch,seconds\n"
            "gpt2,block,0,server.device,forward,64,1,inf\n"
        },
    ),
    Case(
        "client_weight_dtype_unknown",
        edit(("clients.0.weight_dtype", "int3")),
        ["clients.0.weight_dtype", "'fp16'", "'int8' or 'int4'"],
    ),
    Case(
        "client_weight_dtype_with_a_cost_table",
        edit(
            ("clients.0.device", {**GOOD_DEVICE, "kind": "client", "cost_table": "t.csv"}),
            ("clients.0.weight_dtype", "int4"),
        ),
        ["clients.0.weight_dtype", "int4", "model 'gpt2'", "cost_table"],
        files={
            "t.csv": "model,unit_kind,unit_index,device,phase,tokens,batch,seconds\n"
            "gpt2,block,0,clients.0.device,forward,64,1,0.001\n"
        },
    ),
    Case(
        "empirical_jitter_negative",
        edit(
            (
                "clients.0.link.jitter",
                {"delay_ms": {"kind": "empirical", "path": "j.csv", "column": "ms"}},
            )
        ),
        ["clients.0.link.jitter.delay_ms.path", "column 'ms'", ">= 0"],
        files={"j.csv": "ms\n1\n-2\n"},
    ),
    Case(
        "set_bool_as_number",
        edit(),
        ["server.slots", "got True"],
        args=["--set", "server.slots=true"],
    ),
    # --- --set overrides
    Case(
        "set_into_scalar",
        edit(),
        ["--set seed.x", "'seed' is a value, not a section"],
        args=["--set", "seed.x=1"],
    ),
    Case(
        "set_invalid_value",
        edit(),
        ["server.slots", "an integer >= 1 and <= 4096, got 0"],
        args=["--set", "server.slots=0"],
    ),
    Case(
        "set_without_equals",
        edit(),
        ["--set server.slots", "key.path=value"],
        args=["--set", "server.slots"],
    ),
    Case(
        "set_bad_index",
        edit(),
        ["--set clients.3.count", "'3' is not an index of a 1-item list"],
        args=["--set", "clients.3.count=5"],
    ),
    Case(
        "set_unknown_key",
        edit(),
        ["server", "unknown key 'slotz'", "slots"],
        args=["--set", "server.slotz=2"],
    ),
]

SUBPROCESS_CASES = {"binary_file", "unknown_top_level_key", "set_without_equals", "file_not_found"}


def write_case(case: Case, where: Path) -> Path:
    """Write the case's scenario (and its side files) into `where`; return the path."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"bad_{case.id}.yaml"
    for name, text in case.files.items():
        (where / name).write_text(text)
    content = case.scenario() if callable(case.scenario) else case.scenario
    if isinstance(content, dict):
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    return path


def assert_one_error_line(err: str, scenario: Path, expect: list[str]) -> str:
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"not exactly one line: {err!r}"
    line = err.rstrip("\n")
    prefix = f"splitsim: error: {scenario}: "
    assert line.startswith(prefix), line
    for fragment in expect:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


@pytest.fixture(scope="module")
def good_result(tmp_path_factory) -> Path:
    """A complete result folder from a real (tiny) run of BASE."""
    root = tmp_path_factory.mktemp("good")
    scenario = root / "good.yaml"
    scenario.write_text(yaml.safe_dump(BASE, sort_keys=False))
    out = root / "result"
    assert main(["run", str(scenario), "-o", str(out), "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "ok"
    return out


def test_base_scenario_is_valid(tmp_path, capsys):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert main(["check", str(path)]) == 0
    assert "valid" in capsys.readouterr().err


def test_enough_cases():
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, tmp_path, capsys, good_result):
    scenario = write_case(case, tmp_path / "in")
    runs = tmp_path / "runs"
    runs.mkdir()
    fresh = runs / "fresh"
    previous = runs / "previous"
    shutil.copytree(good_result, previous)
    before = snapshot(runs)

    lines = []
    for argv in (
        ["run", str(scenario), "-o", str(fresh), *case.args],
        ["run", str(scenario), "-o", str(previous), *case.args],
        ["check", str(scenario), *case.args],
    ):
        status = main(argv)
        out, err = capsys.readouterr()
        assert status == 2, argv
        assert out == ""
        lines.append(assert_one_error_line(err, scenario, case.expect))

    assert len(set(lines)) == 1, lines  # run and check say the same thing
    assert not fresh.exists()
    assert snapshot(runs) == before  # the old result is untouched, no temporary leftovers


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS_CASES], ids=lambda c: c.id)
def test_bad_input_in_a_fresh_process(case: Case, tmp_path):
    scenario = write_case(case, tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "sim", "run", str(scenario), "-o", str(out), *case.args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, scenario, case.expect)
    assert not out.exists()


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "scenario" in err


# --- result folders


def _good_scenario(where: Path, **changes) -> Path:
    path = where / "good.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}, sort_keys=False))
    return path


def test_refuses_folder_that_is_not_a_result(tmp_path, capsys):
    scenario = _good_scenario(tmp_path)
    out = tmp_path / "thesis"
    (out / "chapters").mkdir(parents=True)
    (out / "notes.txt").write_text("do not lose me\n")
    (out / "chapters" / "one.tex").write_text("\\chapter{One}\n")
    before = snapshot(tmp_path)

    assert main(["run", str(scenario), "-o", str(out), "--quiet"]) == 2
    std_out, err = capsys.readouterr()
    assert std_out == ""
    assert "Traceback" not in err and err.count("\n") == 1
    assert f"{out}: " in err and "not a splitsim result" in err
    assert snapshot(tmp_path) == before


def test_refuses_output_that_is_a_file(tmp_path, capsys):
    scenario = _good_scenario(tmp_path)
    out = tmp_path / "results.txt"
    out.write_text("precious\n")
    assert main(["run", str(scenario), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a folder" in err
    assert out.read_text() == "precious\n"


def test_refuses_output_below_a_file(tmp_path, capsys):
    scenario = _good_scenario(tmp_path)
    blocker = tmp_path / "results.txt"
    blocker.write_text("precious\n")
    out = blocker / "run1"
    assert main(["run", str(scenario), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{out}: " in err and "not a folder" in err
    assert blocker.read_text() == "precious\n"


def test_rerun_replaces_result_completely(tmp_path, capsys):
    scenario = _good_scenario(tmp_path)
    out = tmp_path / "runs" / "r"
    assert main(["run", str(scenario), "-o", str(out), "--quiet"]) == 0
    first = snapshot(out)
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    # A leftover of an older run with other settings must not survive the rerun.
    (out / "requests.parquet").write_bytes(b"stale")

    assert main(["run", str(scenario), "-o", str(out), "--quiet", "--set", "seed=2"]) == 0
    second = snapshot(out)
    assert set(second) == set(first)  # same files; the stale one is gone
    assert json.loads((out / "manifest.json").read_text())["seed"] == 2
    assert yaml.safe_load((out / "scenario.yaml").read_text())["seed"] == 2
    assert second["requests.csv"] != first["requests.csv"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["r"]  # no temporary siblings
    capsys.readouterr()


# --- other commands: the audit's cases, by command line


SOLVE = ["solve", "--model", "gpt2", "--client", "phone-flagship", "--server", "a100-80gb",
         "--uplink-mbps", "20", "--downlink-mbps", "100"]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (
            [*SOLVE, "--tokens", "1000000", "--deadline-s", "1"],
            ["--tokens", "1000000", "at most 1024 positions"],
        ),
        ([*SOLVE, "--tokens", "64", "--deadline-s", "nan"], ["--deadline-s", "got 'nan'"]),
        ([*SOLVE, "--tokens", "64", "--deadline-s", "inf"], ["--deadline-s", "got 'inf'"]),
        (
            [*SOLVE, "--tokens", "64", "--deadline-s", "1", "--uplink-mbps=nan"],
            ["--uplink-mbps", "got 'nan'"],
        ),
        (
            [*SOLVE, "--tokens", "64", "--deadline-s", "1", "--time-step-s=-1"],
            ["--time-step-s", ">= 1e-09"],
        ),
        (
            [*SOLVE, "--tokens", "64", "--deadline-s", "1", "--time-step-s", "1e-8"],
            ["--time-step-s", "at most 100,000 steps"],
        ),
        (
            [*SOLVE, "--tokens", "64", "--deadline-s", "1", "--resident", "-3"],
            ["--resident", "unit count"],
        ),
    ],
    ids=[
        "context",
        "deadline_nan",
        "deadline_inf",
        "uplink_nan",
        "step_negative",
        "step_tiny",
        "resident_negative",
    ],  # fmt: skip
)
def test_solve_bad_flags_are_one_line(argv, expect, capsys):
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own one-line usage errors
        status = exc.code
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert "Traceback" not in err and err.count("\n") == 1, err
    for fragment in expect:
        assert fragment in err, (fragment, err)


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (["--replications", "0"], "--replications"),
        (["--replications=-1"], "--replications"),
        (["--max-utilization", "0"], "--max-utilization"),
        (["--max-sla-violation-rate", "2"], "--max-sla-violation-rate"),
        (["--rel-tol", "0"], "--rel-tol"),
    ],
)
def test_capacity_bad_flags_are_one_line_and_leave_nothing(flags, expect, tmp_path, capsys):
    scenario = _good_scenario(tmp_path)
    out = tmp_path / "cap"
    with pytest.raises(SystemExit) as exc:
        main(["capacity", str(scenario), "-o", str(out), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in err and "must be" in err
    assert not out.exists()


def test_catalog_with_a_bad_scenario_is_an_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("clients: [\n")
    for what in ("models", "devices", "policies"):
        assert main(["catalog", what, "--scenario", str(bad)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and str(bad) in err


def test_catalog_models_lists_a_scenarios_own_models(tmp_path, capsys):
    raw = {**BASE, "models": {"tiny": {**TINY_MODEL, "heads": 4}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["catalog", "models", "--scenario", str(path)]) == 0
    assert "tiny" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("sweep", "expect"),
    [
        ("grid:\n  seed: {start: 1, stop: 3, num: 0}\n", ["grid.seed.num", ">= 1"]),
        ("grid:\n  seed: 5\n", ["grid.seed", "a factor is a list of values or a range"]),
        ("grid:\n  seed: [1, 2]\nname: a\n", ["duplicate key 'name'"]),
        (
            "a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
            + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
            + "grid:\n  seed: *a8\n",
            ["expands to more than 1,000,000 values"],
        ),
    ],
    ids=["range_num_zero", "factor_scalar", "duplicate_key", "anchor_bomb"],
)
def test_bad_sweep_file_is_one_line_and_leaves_nothing(sweep, expect, tmp_path, capsys):
    base = _good_scenario(tmp_path)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: s\nbase: {base}\n{sweep}")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(path) in err
    for fragment in expect:
        assert fragment in err, (fragment, err)
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (["--torch-device", "nonsense"], "--torch-device: 'nonsense' is not a torch device"),
        (["--torch-device", "cuda:7"], "--torch-device: "),
        (["-o", "/proc/x.csv"], "/proc/x.csv: cannot write the results here"),
        (["-o", "{tmp}"], "is a folder; give a file name"),
        (["-o", "{tmp}/file.txt/x.csv"], "is not a folder"),
    ],
    ids=["device_unknown", "device_absent", "proc", "folder", "below_a_file"],
)
def test_profile_refuses_bad_device_or_output_before_measuring(flags, expect, tmp_path, capsys):
    pytest.importorskip("torch")
    if "cuda" in flags[-1]:
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has a cuda:7")
    (tmp_path / "file.txt").write_text("precious\n")
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    out = [] if "-o" in flags else ["-o", str(tmp_path / "t.csv")]
    before = sorted(p.name for p in tmp_path.iterdir())
    status = main(["profile", "--model", "gpt2", "--tokens", "8", *out, *flags])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert expect in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
