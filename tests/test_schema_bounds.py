"""Bad input generated from the schema: every bounded number, every flag, every path.

The ranges live in `sim/limits.py` and ride along in the schemas' field types, so this
file finds them itself: for each numeric field of each schema section it writes a small
scenario with the field set to 0, a negative number, NaN, infinities, an absurd number, a
boolean and a word (whichever the bound refuses) and checks the contract: exit status 2,
one line naming the file and the field, nothing on disk. It also runs each field at the
edges of its range, where the contract is "runs, or fails with one line". The command-line
flags that carry a bound are found in the parser and tried the same way. A new section or
a numeric field without a bound fails `test_every_number_has_a_bound`. Every field that
takes one of a set of names (a `Literal`: a dtype, a kind, a discipline) is given a word
outside the set, which must be one line naming the field and listing the allowed names.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import signal
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fsnap import snapshot
from pydantic import BaseModel

from sim.catalog.specs import DeviceSpec, ModelSpec
from sim.cli import build_parser, main
from sim.config import base as dist
from sim.config import scenario as sc
from sim.limits import Bound, bound_of
from sim.sweep import spec as sweep_spec

TINY = {
    "architecture": "decoder",
    "layers": 2,
    "hidden_size": 64,
    "heads": 4,
    "kv_heads": 2,
    "mlp_size": 128,
    "mlp_kind": "gelu",
    "vocab_size": 1000,
    "max_positions": 512,
}
SERVER = {
    "kind": "server",
    "peak_tflops": {"fp16": 100},
    "memory_bandwidth_gb_s": 1000,
    "memory_gb": 40,
    "power_w": 300,
}
REQUEST_BASE: dict = {
    "name": "bounds",
    "seed": 1,
    "requests": 12,
    "policies": ["dp", "server_only"],
    "models": {"tiny": TINY},
    "devices": {"srv": SERVER},
    "server": {"device": "srv", "slots": 1, "max_queue": 50},
    "clients": [
        {
            "name": "phones",
            "count": 2,
            "device": "phone-flagship",
            "resident": {"first": 2},
            "link": {
                "uplink_mbps": 50,
                "downlink_mbps": 200,
                "rtt_ms": 20,
                "jitter": {"delay_ms": {"kind": "exponential", "mean": 1}},
            },
        }
    ],
    "workload": {
        "arrival": {"kind": "poisson", "rate_per_s": 20},
        "mix": [
            {
                "name": "score",
                "model": "tiny",
                "task": "forward",
                "prompt_tokens": 16,
                "deadline_factor": 4,
                "weight": 1,
            }
        ],
    },
    "output": {"timeseries_bins": 20},
}
TOKEN_BASE = copy.deepcopy(REQUEST_BASE)
TOKEN_BASE["simulation"] = {"granularity": "token", "max_batch_requests": 8}
TOKEN_BASE["workload"]["mix"][0] = {
    "name": "chat",
    "model": "tiny",
    "task": "generate",
    "prompt_tokens": 16,
    "output_tokens": 4,
    "deadline_s": 5,
    "ttft_deadline_s": 1,
    "tpot_deadline_s": 0.5,
}
SYNTH_BASE = copy.deepcopy(REQUEST_BASE)
SYNTH_BASE["workload"]["mix"][0] = {
    "name": "job",
    "task": "synthetic",
    "service_s": {"kind": "exponential", "mean": 0.01},
    "deadline_factor": 4,
}
FLEET_BASE = copy.deepcopy(REQUEST_BASE)
del FLEET_BASE["server"]
FLEET_BASE["servers"] = [{"name": "g", "device": "srv", "slots": 1, "max_queue": 50, "count": 2}]
FLEET_BASE["routing"] = {"policy": "least_outstanding"}
FLEET_BASE["clients"][0]["sites"] = {"g": {"uplink_mbps": 40, "downlink_mbps": 100, "rtt_ms": 10}}
FLEET_BASE["workload"]["mix"][0].pop("deadline_factor")
FLEET_BASE["workload"]["mix"][0]["deadline_s"] = 1.0  # the sites differ: seconds
BASES = {"request": REQUEST_BASE, "token": TOKEN_BASE, "synthetic": SYNTH_BASE,
         "fleet": FLEET_BASE}  # fmt: skip


@dataclass(frozen=True)
class Site:
    """Where a schema section's fields are set: a base, a dotted prefix, a template."""

    base: str
    prefix: str
    template: dict | None = None  # replaces the section first (e.g. a distribution kind)
    clear: dict[str, tuple[str, ...]] = field(default_factory=dict)  # field -> keys to null


PROMPT = "workload.mix.0.prompt_tokens"
SITES: dict[type, Site] = {
    sc.Scenario: Site("request", ""),
    sc.ServerConfig: Site("request", "server"),
    sc.ServerGroup: Site("fleet", "servers.0"),
    sc.SiteLink: Site("fleet", "clients.0.sites.g"),
    sc.RoutingConfig: Site("fleet", "routing"),
    sc.LinkConfig: Site("request", "clients.0.link"),
    sc.ClientGroup: Site("request", "clients.0"),
    sc.ArrivalConfig: Site(
        "request",
        "workload.arrival",
        clear={"per_client_rate_per_s": ("rate_per_s",), "load": ("rate_per_s",)},
    ),
    sc.RequestClass: Site("token", "workload.mix.0", clear={"deadline_factor": ("deadline_s",)}),
    sc.SplitConfig: Site("request", "split"),
    sc.PinnedUnits: Site("token", "workload.mix.0.client_required", {"first": 1}),
    sc.SimulationConfig: Site("token", "simulation"),
    sc.OutputConfig: Site("request", "output"),
    dist.Fixed: Site("request", PROMPT, {"kind": "fixed", "value": 16}),
    dist.Uniform: Site("request", PROMPT, {"kind": "uniform", "low": 8, "high": 16}),
    dist.LogNormal: Site(
        "request", PROMPT, {"kind": "lognormal", "median": 8, "sigma": 0.5, "min": 1, "max": 32}
    ),
    dist.Exponential: Site(
        "request", "clients.0.link.jitter.delay_ms", {"kind": "exponential", "mean": 1}
    ),
    ModelSpec: Site("request", "models.tiny"),
    DeviceSpec: Site("request", "devices.srv"),
}
# Fields that exist only in another base (service_s is for synthetic requests).
FIELD_BASE = {
    (sc.RequestClass, "service_s"): "synthetic",
    (sc.RequestClass, "deadline_factor"): "request",
}
SWEEP_SITES: dict[type, str] = {
    sweep_spec.SweepSpec: "",
    sweep_spec.CapacityConfig: "capacity",
    sweep_spec.Range: "grid.seed",
}
SCHEMA_ROOTS = (sc.Scenario, ModelSpec, DeviceSpec, sweep_spec.SweepSpec)
# Their maximum is legitimate but is a long run by design (the arrivals bound and the
# memory-safe mode are tested in test_bounds.py); these edges are checked by validation only.
LONG_AT_MAX = {
    (sc.Scenario, "replications"),
    (sc.ClientGroup, "count"),
    (sc.ServerConfig, "slots"),
    (sc.ServerConfig, "max_queue"),
    (sc.ServerGroup, "slots"),
    (sc.ServerGroup, "max_queue"),
    (sc.ServerGroup, "count"),
    (ModelSpec, "layers"),
}
# Valid, but hours of simulated requests: only validated (the arrivals bound caps the work).
VALIDATE_ONLY_AT_MAX = {(sc.Scenario, "requests")}


# ---- walking the schema ------------------------------------------------------------------


def _numeric_leaves(annotation: typing.Any) -> Iterator[tuple[typing.Any, Bound | None]]:
    """Numeric types inside an annotation (through unions, lists, dicts), with their bounds."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *meta = typing.get_args(annotation)
        b = bound_of(meta)
        if b is not None:
            yield annotation, b
            return
        yield from _numeric_leaves(inner)
        return
    if annotation in (int, float):
        yield annotation, None
        return
    for arg in typing.get_args(annotation):
        yield from _numeric_leaves(arg)


def _sections(root: type[BaseModel], seen: set | None = None) -> Iterator[type[BaseModel]]:
    """`root` and every schema section reachable from its fields."""
    seen = set() if seen is None else seen
    if root in seen:
        return
    seen.add(root)
    yield root
    for info in root.model_fields.values():
        for cls in _models_in(info.annotation):
            yield from _sections(cls, seen)


def _models_in(annotation: typing.Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def bounded_fields(cls: type[BaseModel]) -> list[tuple[str, Bound]]:
    out = []
    for name, info in cls.model_fields.items():
        b = bound_of(info.metadata)
        if b is None:
            leaves = [lb for _, lb in _numeric_leaves(info.annotation) if lb is not None]
            b = leaves[0] if leaves else None
        if b is not None:
            out.append((name, b))
    return out


def all_sections() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for root in SCHEMA_ROOTS:
        for cls in _sections(root):
            if cls not in found:
                found.append(cls)
    return found


# ---- values ------------------------------------------------------------------------------


def invalid_values(b: Bound) -> list[object]:
    """0, a negative, NaN, infinities, an absurd number, a boolean, a word: those refused."""
    candidates: list[object] = [0, -1, -1e300, 1e300, b.hi * 10 + 1, math.nan, -math.inf, True]
    if not b.inf_ok:
        candidates.append(math.inf)
    if b.integer:
        candidates.append(b.lo + 0.5)
    below = b.lo if b.lo_open else (b.lo - 1 if b.integer else b.lo - max(abs(b.lo), 1) * 0.5)
    candidates.append(below)
    out = []
    for v in candidates:
        try:
            b.parse(v)
        except ValueError:
            if v not in out or (isinstance(v, float) and math.isnan(v)):
                out.append(v)
    out.append("many")
    return out


def edge_values(b: Bound) -> list[float]:
    """The smallest and largest values the bound accepts."""
    low = b.lo
    if b.lo_open:
        low = b.lo + 1 if b.integer else b.lo + max(abs(b.lo), 1) * 1e-6
    return [b.parse(low), b.parse(b.hi)]


def _yaml_value(v: object) -> object:
    return v  # yaml.safe_dump writes .nan / .inf / true as YAML does


def set_dotted(raw: dict, dotted: str, value: object) -> None:
    node: typing.Any = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def scenario_with(cls: type, name: str, value: object) -> dict:
    site = SITES[cls]
    raw = copy.deepcopy(BASES[FIELD_BASE.get((cls, name), site.base)])
    if site.template is not None:
        set_dotted(raw, site.prefix, copy.deepcopy(site.template))
    for key in site.clear.get(name, ()):
        set_dotted(raw, f"{site.prefix}.{key}" if site.prefix else key, None)
    if cls is dist.LogNormal and name == "max" and isinstance(value, float) and value > 1e6:
        raw["workload"]["mix"][0]["prompt_tokens"]["max"] = value  # context error: one line
    if cls is DeviceSpec and name == "peak_tflops":
        value = {"fp16": value}
    set_dotted(raw, f"{site.prefix}.{name}" if site.prefix else name, value)
    return raw


def field_cases() -> list:
    cases = []
    for cls in SITES:
        for name, b in bounded_fields(cls):
            for v in invalid_values(b):
                cases.append(pytest.param(cls, name, v, id=f"{cls.__name__}.{name}={v!r}"))
    return cases


def edge_cases() -> list:
    cases = []
    for cls in SITES:
        for name, b in bounded_fields(cls):
            for i, v in enumerate(edge_values(b)):
                marks = ()
                if i == 1 and (cls, name) in LONG_AT_MAX:
                    marks = (pytest.mark.slow,)
                command = "check" if i == 1 and (cls, name) in VALIDATE_ONLY_AT_MAX else "run"
                cases.append(pytest.param(cls, name, v, command, marks=marks,
                                          id=f"{cls.__name__}.{name}={v!r}"))  # fmt: skip
    return cases


# ---- the contract ------------------------------------------------------------------------


def one_line(err: str, *fragments: str) -> str:
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    for f in fragments:
        assert f in err, f"{f!r} not in {err!r}"
    return err


class _Timeout(BaseException):  # not an Exception: the CLI's bug handler must not catch it
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Timeout


def run_with_limit(argv: list[str], seconds: int = 60) -> int:
    """main(argv) in this process, stopped (as a failure) after `seconds`."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        return main(argv)
    except _Timeout:
        pytest.fail(f"{argv} still running after {seconds} s: unbounded work")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ---- tests -------------------------------------------------------------------------------


def test_every_number_has_a_bound():
    """A numeric field without a range, or a section no site covers, fails here."""
    unbounded, uncovered = [], []
    for cls in all_sections():
        for name, info in cls.model_fields.items():
            leaves = list(_numeric_leaves(info.annotation))
            if bound_of(info.metadata) is None and any(b is None for _, b in leaves):
                unbounded.append(f"{cls.__name__}.{name}")
        if bounded_fields(cls) and cls not in SITES and cls not in SWEEP_SITES:
            uncovered.append(cls.__name__)
    assert not unbounded, f"numeric fields without a limits.Bound: {unbounded}"
    assert not uncovered, f"sections with bounded fields no test site covers: {uncovered}"


def test_the_bases_run(tmp_path):
    for name, raw in BASES.items():
        path = write(tmp_path / f"{name}.yaml", raw)
        assert main(["run", str(path), "-o", str(tmp_path / name), "--quiet"]) == 0, name


def test_enough_generated_cases():
    assert len(field_cases()) >= 300
    assert len(edge_cases()) >= 100


@pytest.mark.parametrize(("cls", "name", "value"), field_cases())
def test_out_of_range_value_is_one_line(cls, name, value, tmp_path, capsys):
    path = write(tmp_path / "bad.yaml", scenario_with(cls, name, value))
    out = tmp_path / "out"
    assert main(["check", str(path)]) == 2
    std, err = capsys.readouterr()
    assert std == ""
    one_line(err, f"splitsim: error: {path}: ", name)
    assert main(["run", str(path), "-o", str(out), "--quiet"]) == 2
    assert not out.exists()
    capsys.readouterr()


@pytest.mark.parametrize(("cls", "name", "value", "command"), edge_cases())
def test_value_at_the_edge_of_its_range_runs_or_is_one_line(
    cls, name, value, command, tmp_path, capsys
):
    path = write(tmp_path / "edge.yaml", scenario_with(cls, name, value))
    out = ["-o", str(tmp_path / "out"), "--quiet"] if command == "run" else []
    status = run_with_limit([command, str(path), *out])
    std, err = capsys.readouterr()
    assert status in (0, 2), err
    if status == 2:
        one_line(err, f"splitsim: error: {path}: ")
    elif command == "run":
        assert (tmp_path / "out" / "summary.csv").is_file()


# ---- fields that take one of a set of names ---------------------------------------------------


def allowed_names(annotation: typing.Any) -> tuple[str, ...] | None:
    """The names a field takes when it is a `Literal` of names (or such a `Literal` or
    None, as an unset client `weight_dtype`), else None."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        values = typing.get_args(annotation)
    elif len(args) == 1 and typing.get_origin(args[0]) is typing.Literal:
        values = typing.get_args(args[0])
    else:
        return None
    return values if all(isinstance(v, str) for v in values) else None


def name_cases() -> list:
    """A word outside the allowed set for every such field of every site."""
    return [
        pytest.param(cls, name, allowed, id=f"{cls.__name__}.{name}")
        for cls in SITES
        for name, info in cls.model_fields.items()
        if (allowed := allowed_names(info.annotation)) is not None
    ]


def test_name_fields_are_found():
    found = {(c.values[0].__name__, c.values[1]) for c in name_cases()}
    assert ("ClientGroup", "weight_dtype") in found
    assert ("ModelSpec", "weight_dtype") in found
    assert len(found) >= 15


@pytest.mark.parametrize(("cls", "name", "allowed"), name_cases())
def test_unknown_name_is_one_line_listing_the_allowed(cls, name, allowed, tmp_path, capsys):
    path = write(tmp_path / "bad.yaml", scenario_with(cls, name, "no-such-name"))
    out = tmp_path / "out"
    assert main(["check", str(path)]) == 2
    std, err = capsys.readouterr()
    assert std == ""
    one_line(err, f"splitsim: error: {path}: ", name, *(repr(v) for v in allowed))
    assert main(["run", str(path), "-o", str(out), "--quiet"]) == 2
    assert not out.exists()
    capsys.readouterr()


# ---- sweep files ---------------------------------------------------------------------------


def sweep_with(cls: type, name: str, value: object, base: Path) -> dict:
    raw: dict = {"name": "s", "base": str(base), "grid": {"seed": [1, 2]}}
    if cls is sweep_spec.CapacityConfig:
        raw = {"name": "s", "base": str(base), "capacity": {name: value}}
    elif cls is sweep_spec.Range:
        rng = {"start": 1, "stop": 3, "num": 2}
        rng[name] = value
        raw["grid"] = {"seed": rng}
    else:
        raw[name] = value
    return raw


def sweep_cases() -> list:
    return [
        pytest.param(cls, name, v, id=f"{cls.__name__}.{name}={v!r}")
        for cls in SWEEP_SITES
        for name, b in bounded_fields(cls)
        for v in invalid_values(b)
    ]


@pytest.mark.parametrize(("cls", "name", "value"), sweep_cases())
def test_out_of_range_sweep_value_is_one_line(cls, name, value, tmp_path, capsys):
    base = write(tmp_path / "base.yaml", REQUEST_BASE)
    path = write(tmp_path / "sweep.yaml", sweep_with(cls, name, value, base))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "-o", str(out), "--quiet"]) == 2
    std, err = capsys.readouterr()
    one_line(err, f"splitsim: error: {path}: ", name)
    assert not out.exists()


# ---- command-line flags --------------------------------------------------------------------


def _flag_commands(tmp: Path) -> dict[str, list[str]]:
    """A valid command line per sub-command, to which one bad flag is added."""
    scenario = str(write(tmp / "base.yaml", REQUEST_BASE))
    return {
        "solve": ["solve", "--model", "gpt2", "--tokens", "64", "--client", "phone-flagship",
                  "--server", "a100-80gb", "--uplink-mbps", "20", "--downlink-mbps", "100",
                  "--deadline-s", "1"],
        "capacity": ["capacity", scenario, "-o", str(tmp / "cap")],
        "sweep": ["sweep", scenario, "-o", str(tmp / "sw")],
        "paper": ["paper", "-o", str(tmp / "paper")],
        "profile": ["profile", "--model", "gpt2", "--tokens", "8", "-o", str(tmp / "p.csv")],
        "calibrate": ["calibrate", str(tmp / "gpu"), "--device", "a100-80gb", "-o",
                      str(tmp / "cal")],
        "run": ["run", scenario, "-o", str(tmp / "run")],
    }  # fmt: skip


def bounded_flags() -> list[tuple[str, str, Bound]]:
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices  # noqa: SLF001
    found = []
    for command, sub in subs.items():
        for action in sub._actions:  # noqa: SLF001
            b = getattr(action.type, "bound", None)
            if b is not None:
                found.append((command, action.option_strings[0], b))
    return found


def flag_cases() -> list:
    return [
        pytest.param(cmd, flag, v, id=f"{cmd} {flag}={v!r}")
        for cmd, flag, b in bounded_flags()
        for v in invalid_values(b)
    ]


def test_flags_with_numbers_have_bounds():
    """Every flag whose value is a number parses it through a limits.Bound."""
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices  # noqa: SLF001
    loose = [
        f"{cmd} {a.option_strings[0]}"
        for cmd, sub in subs.items()
        for a in sub._actions  # noqa: SLF001
        if a.type in (int, float)
    ]
    assert not loose, f"flags parsed with bare int/float: {loose}"
    assert len(bounded_flags()) >= 15


@pytest.mark.parametrize(("command", "flag", "value"), flag_cases())
def test_out_of_range_flag_is_one_line(command, flag, value, tmp_path, capsys):
    argv = [*_flag_commands(tmp_path)[command], f"{flag}={value}"]
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    std, err = capsys.readouterr()
    assert std == ""
    one_line(err, flag, "must be")
    assert snapshot(tmp_path) == before


# ---- paths -----------------------------------------------------------------------------------

PATH_KINDS = ("missing", "folder", "binary", "empty", "fifo", "unreadable")


def make_path(kind: str, where: Path, name: str) -> Path:
    """A path of the given hostile kind below `where`."""
    path = where / name
    if kind == "folder":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 64)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "fifo":
        import os

        os.mkfifo(path)
    elif kind == "unreadable":
        path.write_text("time_s,uplink_mbps,downlink_mbps\n0,1,1\n")
        path.chmod(0)
    return path


def _scenario_path_site(dotted: str, value: dict | str):
    def build(path: Path, tmp: Path) -> list[str]:
        raw = copy.deepcopy(REQUEST_BASE)
        set_dotted(raw, dotted, value if isinstance(value, str) else value)
        text = yaml.safe_dump(raw, sort_keys=False).replace("@PATH@", str(path))
        scenario = tmp / "s.yaml"
        scenario.write_text(text)
        return ["run", str(scenario), "-o", str(tmp / "out"), "--quiet"]

    return build


PATH_SITES = {
    "run SCENARIO": lambda p, tmp: ["run", str(p), "-o", str(tmp / "out"), "--quiet"],
    "check SCENARIO": lambda p, tmp: ["check", str(p)],
    "sweep SWEEP": lambda p, tmp: ["sweep", str(p), "-o", str(tmp / "out"), "--quiet"],
    "capacity SCENARIO": lambda p, tmp: ["capacity", str(p), "-o", str(tmp / "out")],
    "catalog --scenario": lambda p, tmp: ["catalog", "devices", "--scenario", str(p)],
    "plot DIR": lambda p, tmp: ["plot", str(p)],
    "solve --server-cost-table": lambda p, tmp: [
        "solve",
        "--model",
        "gpt2",
        "--tokens",
        "64",
        "--client",
        "phone-flagship",
        "--server",
        "a100-80gb",
        "--uplink-mbps",
        "20",
        "--downlink-mbps",
        "100",
        "--deadline-s",
        "1",
        "--server-cost-table",
        str(p),
    ],  # fmt: skip
    "workload.arrival.path": _scenario_path_site(
        "workload.arrival", {"kind": "trace", "path": "@PATH@"}
    ),
    "clients.0.link.trace": _scenario_path_site("clients.0.link.trace", "@PATH@"),
    "prompt_tokens empirical": _scenario_path_site(
        PROMPT, {"kind": "empirical", "path": "@PATH@", "column": "n"}
    ),
    "devices.srv.cost_table": _scenario_path_site("devices.srv.cost_table", "@PATH@"),
}


def path_cases() -> list:
    return [
        pytest.param(site, kind, id=f"{site}:{kind}")
        for site in PATH_SITES
        for kind in PATH_KINDS
        if not (site == "plot DIR" and kind == "folder")  # an empty folder is a valid DIR
    ]


@pytest.mark.parametrize(("site", "kind"), path_cases())
def test_hostile_path_is_one_line(site, kind, tmp_path, capsys):
    import os

    if kind == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    hostile = make_path(kind, tmp_path, "input.csv" if "." in site or "table" in site else "in")
    argv = PATH_SITES[site](hostile, tmp_path)
    status = run_with_limit(argv, 30)
    std, err = capsys.readouterr()
    assert status == 2, (status, err)
    one_line(err, "splitsim: error: ")
    assert not (tmp_path / "out").exists()


# ---- valid values together -------------------------------------------------------------------

# Fields whose values multiply the work (they have their own edge tests above).
_WORK = {(sc.Scenario, "requests"), (sc.Scenario, "replications"), (sc.Scenario, "duration_s"),
         (sc.ClientGroup, "count"), (sc.RequestClass, "service_s")}  # fmt: skip
_COMBINABLE = [(c, n, b) for c in SITES for n, b in bounded_fields(c) if (c, n) not in _WORK]


def _in_bound(b: Bound):
    """A hypothesis strategy for values inside `b`, edges included, log-spread when wide."""
    from hypothesis import strategies as st

    lo = b.lo + (1 if b.integer else max(abs(b.lo), 1) * 1e-6) if b.lo_open else b.lo
    if b.integer:
        return st.one_of(st.sampled_from([int(lo), int(b.hi)]), st.integers(int(lo), int(b.hi)))
    spread = st.floats(lo, b.hi, allow_nan=False, allow_infinity=False)
    if lo > 0:
        log = st.floats(math.log(lo), math.log(b.hi)).map(math.exp)
        spread = st.one_of(spread, log.map(lambda v: b.parse(min(max(v, lo), b.hi))))
    return st.one_of(st.sampled_from([lo, b.hi]), spread)


def test_valid_values_together_run_or_are_one_line(tmp_path_factory):
    """Three random in-range values at once (plus a policy pair and a discipline): the run
    finishes, or refuses in one line (a combination the schema's per-field ranges cannot
    see, such as a prompt longer than a model's context)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @st.composite
    def scenarios(draw):
        base = draw(st.sampled_from(["request", "token"]))
        raw = copy.deepcopy(BASES[base])
        for cls, name, b in draw(st.lists(st.sampled_from(_COMBINABLE), min_size=1, max_size=3)):
            site = SITES[cls]
            if site.template is not None:
                set_dotted(raw, site.prefix, copy.deepcopy(site.template))
            for key in site.clear.get(name, ()):
                set_dotted(raw, f"{site.prefix}.{key}" if site.prefix else key, None)
            value = draw(_in_bound(b))
            value = {"fp16": value} if (cls, name) == (DeviceSpec, "peak_tflops") else value
            set_dotted(raw, f"{site.prefix}.{name}" if site.prefix else name, value)
        policies = ["dp", "greedy", "server_only", "dp_queue_aware", "best_cut", "client_only"]
        raw["policies"] = draw(st.lists(st.sampled_from(policies), min_size=1, max_size=2,
                                        unique=True))  # fmt: skip
        raw["server"]["discipline"] = draw(st.sampled_from(["fifo", "edf"]))
        return raw

    @settings(max_examples=100, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(scenarios())
    def check(raw):
        tmp = tmp_path_factory.mktemp("combo")
        path = write(tmp / "c.yaml", raw)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = run_with_limit(["run", str(path), "-o", str(tmp / "out"), "--quiet"])
        assert status in (0, 2), err.getvalue()
        if status == 2:
            one_line(err.getvalue(), f"splitsim: error: {path}: ")

    check()


@pytest.mark.parametrize("granularity", ["request", "token"])
def test_a_trace_arriving_all_at_once_runs(granularity, tmp_path, capsys):
    """Found by the token timeline test: every arrival at t = 0 left no span to divide the
    offered rate by (a crash); the offered rate of such a trace is NaN."""
    (tmp_path / "t.csv").write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n"
                                    "0,16,3\n0,16,4\n0,32,2\n")  # fmt: skip
    raw = copy.deepcopy(REQUEST_BASE)
    raw.pop("requests")
    raw["workload"]["arrival"] = {"kind": "trace", "path": "t.csv"}
    raw["workload"]["mix"][0].update(task="generate", deadline_s=5)
    raw["workload"]["mix"][0].pop("deadline_factor")
    raw["workload"]["mix"][0].pop("prompt_tokens")
    if granularity == "token":
        raw["simulation"] = {"granularity": "token"}
    path = write(tmp_path / "s.yaml", raw)
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "--quiet"]) == 0, (
        capsys.readouterr()
    )
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary["completed"].eq(3).all() and summary["offered_rate_per_s"].isna().all()


def test_unreadable_files_are_one_line_even_as_root(tmp_path, capsys, monkeypatch):
    """Root reads files whatever their mode, so the permission error is injected: the
    scenario, a CSV it names and a cost table each fail in one line naming the file."""
    import pandas

    scenario = write(tmp_path / "s.yaml", REQUEST_BASE)
    real_read_text = Path.read_text

    def denied_read_text(self, *args, **kwargs):
        if self.name == "s.yaml":
            raise PermissionError(13, "Permission denied")
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied_read_text)
    assert main(["check", str(scenario)]) == 2
    one_line(capsys.readouterr().err, str(scenario), "Permission denied")
    monkeypatch.setattr(Path, "read_text", real_read_text)

    raw = copy.deepcopy(REQUEST_BASE)
    raw["clients"][0]["link"]["trace"] = "bw.csv"
    (tmp_path / "bw.csv").write_text("time_s,uplink_mbps,downlink_mbps\n0,1,1\n")
    scenario = write(tmp_path / "t.yaml", raw)

    def denied_read_csv(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pandas, "read_csv", denied_read_csv)
    assert main(["check", str(scenario)]) == 2
    one_line(capsys.readouterr().err, str(scenario), "clients.0.link.trace", "Permission denied")


# ---- studies.yaml (`splitsim paper`'s static studies) ------------------------------------------

STUDIES_BASE: dict = {
    "server": "a100-80gb",
    "clients": ["jetson-orin-nano"],
    "models": ["gpt2"],
    "policies": ["server_only", "best_cut", "dp"],
    "link": {"uplink_mbps": 500, "downlink_mbps": 1000, "rtt_ms": 5},
    "tokens": 64,
    "sla_factors": [3],
    "token_values": [64],
    "speed_clients": ["rpi4"],
    "uplink_values_mbps": [500],
    "unit_cost_model": "gpt2",
    "unit_cost_tokens": [64],
    "abs_sla_reference_tokens": 64,
    "abs_sla_token_values": [32, 128],
    "multi_switch": {
        "model": "gpt2", "client": "laptop-m2", "granularity": "sublayer", "tokens": 32,
        "link": {"uplink_mbps": 25000, "downlink_mbps": 25000, "rtt_ms": 0.05},
        "deadline_factor": 3, "attention_speedups": [1, 4],
    },
}  # fmt: skip


def _studies_sites() -> list[tuple[type, str]]:
    from sim.paper import studies

    return [(studies.StudySpec, ""), (studies.MultiSwitchSpec, "multi_switch"),
            (studies.BoundedLinkSpec, "link"),
            (studies.BoundedLinkSpec, "multi_switch.link")]  # fmt: skip


def _studies_with(prefix: str, cls: type, name: str, value: object) -> dict:
    """STUDIES_BASE with one field set (inside a one-item list where the field is a list)."""
    raw = copy.deepcopy(STUDIES_BASE)
    is_list = "list" in str(cls.model_fields[name].annotation)
    set_dotted(raw, f"{prefix}.{name}" if prefix else name, [value] if is_list else value)
    return raw


def studies_cases(values) -> list:
    cases = []
    for cls, prefix in _studies_sites():
        for name, b in bounded_fields(cls):
            for v in values(b):
                where = f"{prefix}.{name}" if prefix else name
                cases.append(pytest.param(prefix, cls, name, v, id=f"{where}={v!r}"))
    return cases


def _static_studies(raw: dict, where: Path) -> tuple[Path, Path]:
    """Run the static studies on `raw` as studies.yaml; returns the file and the output."""
    from sim.paper.reproduce import static_studies

    (where / "in").mkdir()
    path = write(where / "in" / "studies.yaml", raw)
    out = where / "out"
    out.mkdir()
    static_studies(out, where / "in")
    return path, out


def test_studies_fields_have_bounds():
    """Every number studies.yaml takes is bounded and tried here (the paper's studies' fields
    and those of the studies beyond it, both links)."""
    names = {c.values[2] for c in studies_cases(edge_values)}
    assert {"abs_sla_reference_tokens", "abs_sla_token_values", "tokens", "deadline_factor",
            "attention_speedups", "uplink_mbps", "downlink_mbps", "rtt_ms", "sla_factors",
            "token_values", "uplink_values_mbps", "downlink_per_uplink",
            "unit_cost_tokens"} <= names  # fmt: skip
    from sim.paper import studies

    numeric = {n for n, f in studies.StudySpec.model_fields.items()
               if any(t in str(f.annotation) for t in ("int", "float"))}  # fmt: skip
    assert numeric <= names, numeric - names


@pytest.mark.parametrize(("prefix", "cls", "name", "value"), studies_cases(invalid_values))
def test_out_of_range_studies_value_is_one_line(prefix, cls, name, value, tmp_path):
    from sim.errors import UserError

    with pytest.raises(UserError) as err:
        _static_studies(_studies_with(prefix, cls, name, value), tmp_path)
    path = tmp_path / "in" / "studies.yaml"
    one_line(f"{err.value}\n", f"{path}: ", name)
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(("prefix", "cls", "name", "value"), studies_cases(edge_values))
def test_studies_value_at_the_edge_runs_or_is_one_line(prefix, cls, name, value, tmp_path):
    from sim.errors import UserError

    try:
        _, out = _static_studies(_studies_with(prefix, cls, name, value), tmp_path)
    except UserError as err:
        one_line(f"{err}\n", f"{tmp_path / 'in' / 'studies.yaml'}: ", name)
    else:
        assert (out / "allocation.csv").is_file()


@pytest.mark.parametrize(
    ("dotted", "value", "expect"),
    [
        ("abs_sla_reference_tokens", 2048, "at most 1024 positions"),
        ("multi_switch.tokens", 4096, "at most 1024 positions"),
        ("multi_switch.client", "toaster", "unknown device 'toaster'"),
        ("multi_switch.granularity", "layer", "multi_switch.granularity"),
        ("multi_switch.attention_speedups", [], "multi_switch.attention_speedups"),
    ],
)
def test_studies_names_and_lengths_are_one_line(dotted, value, expect, tmp_path):
    from sim.errors import UserError

    raw = copy.deepcopy(STUDIES_BASE)
    set_dotted(raw, dotted, value)
    with pytest.raises(UserError) as err:
        _static_studies(raw, tmp_path)
    one_line(f"{err.value}\n", f"{tmp_path / 'in' / 'studies.yaml'}: ", dotted, expect)
