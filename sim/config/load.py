"""Load a scenario: YAML, `--set` overrides, strict validation, names and files resolved.

Every problem becomes a `UserError` of one line: the file, the field path, what is allowed.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import ValidationError

from sim import limits
from sim.catalog import devices as catalog_devices
from sim.catalog import models as catalog_models
from sim.catalog.specs import DeviceSpec, ModelSpec
from sim.config.base import Empirical
from sim.config.fleet import ServerSite, check_fleet, fleet_servers
from sim.config.scenario import SIZE_BOUNDS, Scenario
from sim.config.yamlio import YamlProblem, parse_yaml
from sim.costs.precision import own_precision
from sim.errors import UserError, unknown_name
from sim.limits import Bound

TRACE_COLUMNS = {
    "arrival_s": ("arrival_s", "arrived_at", "time_s", "timestamp", "TIMESTAMP"),
    "prompt_tokens": ("prompt_tokens", "num_prefill_tokens", "ContextTokens", "context_tokens"),
    "output_tokens": ("output_tokens", "num_decode_tokens", "GeneratedTokens", "generated_tokens"),
}
BANDWIDTH_COLUMNS = ("time_s", "uplink_mbps", "downlink_mbps")


@dataclass
class LoadedScenario:
    """A validated scenario with its names and files resolved, ready to run."""

    scenario: Scenario
    source: str
    base_dir: Path
    models: dict[str, ModelSpec] = field(default_factory=dict)
    devices: dict[str, DeviceSpec] = field(default_factory=dict)
    server_device: DeviceSpec | None = None
    client_devices: list[DeviceSpec] = field(default_factory=list)
    arrival_trace: pd.DataFrame | None = None
    bandwidth_traces: list[np.ndarray | None] = field(default_factory=list)
    pinned: list[np.ndarray | None] = field(default_factory=list)  # per class: client_required
    group_devices: list[DeviceSpec] = field(default_factory=list)  # per server group
    fleet: list[ServerSite] = field(default_factory=list)  # every server (one for server:)


def _format_validation(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] == "missing":
        msg = "required field is missing"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {path}: {msg}{more}"


def read_yaml(path: str | Path) -> dict:
    """A YAML file that must hold a mapping."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p}: is a folder; expected a YAML file")
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    try:
        raw = parse_yaml(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{p}: not valid YAML{where}") from None
    except YamlProblem as err:
        raise UserError(f"{p}: {err}") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a text file") from None
    except OSError as err:
        raise UserError(f"{p}: cannot read the file ({err.strerror})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{p}: expected a mapping of scenario keys at the top level")
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a copy of `raw`."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item}: expected key.path=value")
        key, text = item.split("=", 1)
        try:
            value = parse_yaml(text)
        except (yaml.YAMLError, YamlProblem) as err:
            why = f" ({err})" if isinstance(err, YamlProblem) else ""
            raise UserError(f"--set {key}: value is not valid YAML{why}") from None
        set_path(out, key, value, where=f"--set {key}")
    return out


def set_path(tree: dict, dotted: str, value: Any, where: str = "") -> None:
    """Set a dotted path (list items by index) in a nested dict, creating mappings."""
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"{where}: '{part}' is not an index of a {len(node)}-item list")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise UserError(f"{where}: '{'.'.join(parts[:i])}' is a value, not a section")


def validate(raw: dict, source: str = "<scenario>", base_dir: Path | None = None) -> LoadedScenario:
    """Validate a raw scenario mapping and resolve its names and files."""
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_validation(source, err)) from None
    loaded = LoadedScenario(scenario, source, base_dir or Path.cwd())
    _resolve_names(loaded)
    _resolve_pinning(loaded)
    _resolve_files(loaded)
    return loaded


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> LoadedScenario:
    """Read, override, validate and resolve a scenario file."""
    p = Path(path)
    raw = read_yaml(p)
    try:
        raw = apply_overrides(raw, overrides or [])
    except UserError as err:
        raise UserError(f"{p}: {err}") from None
    return validate(raw, str(p), p.parent)


def build_spec(cls, name: str, fields: dict, where: str, source: str):
    """A model or device spec from user fields; any problem is one line naming `where`."""
    try:
        return cls(name=name, **fields)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] == "extra_forbidden":
            key = ".".join(str(p) for p in first["loc"])
            names = ", ".join(sorted(f for f in cls.model_fields if f != "name"))
            raise UserError(
                f"{source}: {where}: unknown key '{key}'; valid keys: {names}"
            ) from None
        path, msg = _format_validation(source, err).removeprefix(f"{source}: ").split(": ", 1)
        path = where if path == "(top level)" else f"{where}.{path}"
        raise UserError(f"{source}: {path}: {msg}") from None
    except TypeError as err:
        raise UserError(f"{source}: {where}: {err}") from None


def _resolve_names(ld: LoadedScenario) -> None:
    sc, src = ld.scenario, ld.source
    if sc.output.format == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise UserError(
            f"{src}: output.format: parquet needs pyarrow (pip install pyarrow); use csv"
        )
    from sim.split import POLICIES
    from sim.split.policies import BATCHING_AWARE, TOKEN_ONLY

    for i, name in enumerate(sc.policies):
        if name not in POLICIES:
            raise UserError(
                f"{src}: {unknown_name('policy', name, POLICIES.names(), f'policies.{i}')}"
            )
        if name in TOKEN_ONLY and sc.simulation.granularity != "token":
            what = "plans for a batching server" if name in BATCHING_AWARE else (
                "places prefill and decode apart")  # fmt: skip
            raise UserError(
                f"{src}: policies.{i}: {name} {what}; it needs simulation.granularity: token"
            )
    ld.models = dict(catalog_models())
    for name, fields in sc.models.items():
        ld.models[name] = build_spec(ModelSpec, name, fields, f"models.{name}", src)
    ld.devices = dict(catalog_devices())
    for name, fields in sc.devices.items():
        spec = build_spec(DeviceSpec, name, fields, f"devices.{name}", src)
        ld.devices[name] = _with_table(ld, spec, f"devices.{name}")
    _resolve_fleet(ld)
    ld.client_devices = [
        _device(ld, g.device, f"clients.{i}.device") for i, g in enumerate(sc.clients)
    ]
    for i, cls in enumerate(sc.workload.mix):
        where = f"workload.mix.{i}"
        if cls.task == "synthetic":
            continue
        if cls.model not in ld.models:
            raise UserError(
                f"{src}: {unknown_name('model', cls.model, ld.models, where + '.model')}"
            )
        model = ld.models[cls.model]
        if cls.task == "generate" and (model.architecture == "encoder" or model.head != "lm"):
            raise UserError(
                f"{src}: {where}.task: model '{model.name}' cannot generate; use forward"
            )
    _check_client_precision(ld)
    check_fleet(ld)


def _resolve_fleet(ld: LoadedScenario) -> None:
    """The server devices: `server:`'s, or one per group of `servers:`; the fleet's
    servers; `server_device` is the first group's (a fleet's sites: `site_view`)."""
    sc = ld.scenario
    if sc.servers is None:
        ld.group_devices = [_device(ld, sc.server.device, "server.device")]
        ld.fleet = [ServerSite("server", 0, ld.group_devices[0])]
    else:
        ld.group_devices = [
            _device(ld, g.device, f"servers.{i}.device") for i, g in enumerate(sc.servers)
        ]
        ld.fleet = fleet_servers(sc.servers, ld.group_devices)
    ld.server_device = ld.group_devices[0]


def _check_client_precision(ld: LoadedScenario) -> None:
    """A client group whose copy of the weights has another precision than a model it
    runs is timed by the roofline at that precision: a device's cost table was measured
    at one precision the table does not record, so the two together are refused."""
    sc = ld.scenario
    models = {ld.models[c.model] for c in sc.workload.mix if c.task != "synthetic"}
    for i, (group, device) in enumerate(zip(sc.clients, ld.client_devices, strict=True)):
        other = sorted(m.name for m in models if not own_precision(m, group.weight_dtype))
        if device.cost_table is not None and other:
            raise UserError(
                f"{ld.source}: clients.{i}.weight_dtype: {group.weight_dtype} differs from the "
                f"weight_dtype of model '{other[0]}', but device '{device.name}' has a "
                "cost_table (measured at one precision); drop weight_dtype or the cost_table"
            )


def _resolve_pinning(ld: LoadedScenario) -> None:
    """Each request class's pinned units (`client_required`) as a mask over its model's
    chain, checked against every client group: each must hold them (not `resident:
    none`, a `{first: K}` that covers them, or memory for their weights under `fit`)."""
    from sim.split.build import pinned_units

    sc, src = ld.scenario, ld.source
    ld.pinned = []
    for i, cls in enumerate(sc.workload.mix):
        where = f"workload.mix.{i}.client_required"
        pin = cls.client_required
        if pin is None:
            ld.pinned.append(None)
            continue
        model = ld.models[cls.model]  # type: ignore[index]
        try:
            mask = pinned_units(model, sc.split.granularity, pin.first, pin.units)
        except ValueError as err:
            raise UserError(f"{src}: {where}.{err}") from None
        for g, grp in enumerate(sc.clients):
            problem = _unheld(ld, model, cls.task, mask, g)
            if problem:
                raise UserError(
                    f"{src}: {where}: client group '{grp.name}' cannot run the pinned units "
                    f"({problem}); pin fewer units or let the group hold them"
                )
        mask.setflags(write=False)
        ld.pinned.append(mask)


def _unheld(ld: LoadedScenario, model: ModelSpec, task: str, mask: np.ndarray, g: int) -> str:
    """Why client group g cannot hold the pinned units `mask`, or ''."""
    resident = ld.scenario.clients[g].resident
    last = int(np.flatnonzero(mask)[-1])
    if resident == "none":
        return f"clients.{g}.resident: none"
    if isinstance(resident, dict) and resident["first"] <= last:
        return f"clients.{g}.resident holds the first {resident['first']}, unit {last} is pinned"
    if resident == "fit":
        from sim.costs import request_work
        from sim.costs.precision import weight_copy

        device = ld.client_devices[g]
        copy_ = weight_copy(model, ld.scenario.clients[g].weight_dtype)  # the client's copy
        work = request_work(copy_, task, 1, 1 if task == "generate" else 0,
                            ld.scenario.split.granularity)  # fmt: skip
        need = float(work.weight_bytes[mask].sum())
        if need > device.memory_bytes:
            return (f"their weights need {need / 1e9:.3g} GB, device '{device.name}' has "
                    f"{device.memory_bytes / 1e9:.3g} GB")  # fmt: skip
    return ""


def _device(ld: LoadedScenario, ref: str | dict, where: str) -> DeviceSpec:
    if isinstance(ref, dict):
        fields = dict(ref)
        name = str(fields.pop("name", where))
        return _with_table(ld, build_spec(DeviceSpec, name, fields, where, ld.source), where)
    if ref not in ld.devices:
        raise UserError(f"{ld.source}: {unknown_name('device', ref, ld.devices, where)}")
    return ld.devices[ref]


def _with_table(ld: LoadedScenario, spec: DeviceSpec, where: str) -> DeviceSpec:
    """A device whose cost table path is made absolute (relative to the scenario) and checked."""
    if spec.cost_table is None:
        return spec
    rel = Path(spec.cost_table)
    path = rel if rel.is_absolute() else (ld.base_dir / rel)
    from sim.costs.tables import load_cost_table

    try:
        load_cost_table(path).device_for(spec.name)
    except UserError as err:
        raise UserError(f"{ld.source}: {where}.cost_table: {err}") from None
    return spec.model_copy(update={"cost_table": str(path.resolve())})


def _csv(ld: LoadedScenario, rel: str, where: str) -> tuple[pd.DataFrame, Path]:
    path = (ld.base_dir / rel) if not Path(rel).is_absolute() else Path(rel)
    return read_csv_file(path, f"{ld.source}: {where}"), path


def read_csv_file(path: Path, where: str) -> pd.DataFrame:
    """A CSV file with at least one row, or one line naming `where` (the field that names
    the file, or the file itself) and what is wrong."""
    named = "" if where == str(path) else f" ({path})"  # the path once in the line
    if path.is_dir():
        raise UserError(f"{where}: a folder{named}; expected a CSV file")
    if not path.is_file():
        raise UserError(f"{where}: file not found{named}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else "unreadable"
        raise UserError(f"{where}: not a readable CSV file{named}: {reason}") from None
    except OSError as err:
        raise UserError(f"{where}: cannot read the file{named} ({err.strerror or err})") from None
    if frame.empty:
        raise UserError(f"{where}: CSV file has no rows{named}")
    return frame


def _pick(frame: pd.DataFrame, names: tuple[str, ...], where: str, source: str, path: Path) -> str:
    for name in names:
        if name in frame.columns:
            return name
    have = ", ".join(map(str, frame.columns))
    raise UserError(
        f"{source}: {where}: {path.name} needs a column named one of {', '.join(names)}; it has {have}"
    )


def _numeric(frame: pd.DataFrame, col: str, where: str, source: str, bound: Bound) -> np.ndarray:
    return limits.column_in_bound(frame, col, f"{source}: {where}", bound)


def _resolve_files(ld: LoadedScenario) -> None:
    sc, src = ld.scenario, ld.source
    arrival = sc.workload.arrival
    if arrival.kind == "trace":
        ld.arrival_trace = _load_arrival_trace(ld, arrival.path or "", "workload.arrival.path")
        if arrival.prompt_scale != 1:
            prompts = ld.arrival_trace["prompt_tokens"].to_numpy(float) * arrival.prompt_scale
            ld.arrival_trace["prompt_tokens"] = np.maximum(np.rint(prompts), 1)
        t = ld.arrival_trace["arrival_s"].to_numpy()
        last = sc.replications - 1 if arrival.stride_s else 0  # the latest window's start
        start = arrival.start_s + last * (arrival.stride_s or 0.0)
        times = (t[t >= start] - start) * arrival.time_scale
        if sc.duration_s is not None:
            times = times[times < sc.duration_s]
        if times.size == 0:
            stop = "" if sc.duration_s is None else f" and duration_s {sc.duration_s:g}"
            stride = (f" (replication {last} from start_s + {last} x stride_s = {start:g} s)"
                      if last else "")  # fmt: skip
            raise UserError(
                f"{src}: workload.arrival: no trace rows to replay: the trace spans"
                f" {t[0]:g}-{t[-1]:g} s, with start_s {arrival.start_s:g}{stride}{stop}"
            )
    empirical = [
        (f"workload.mix.{i}.{key}", getattr(cls, key), SIZE_BOUNDS[key])
        for i, cls in enumerate(sc.workload.mix)
        for key in SIZE_BOUNDS
    ] + [
        (f"clients.{i}.link.jitter.delay_ms", g.link.jitter.delay_ms, limits.DELAY_MS)
        for i, g in enumerate(sc.clients)
        if g.link.jitter is not None
    ]
    for field_path, dist, bound in empirical:
        if isinstance(dist, Empirical):
            where = f"{field_path}.path"
            frame, path = _csv(ld, dist.path, where)
            col = _pick(frame, (dist.column,), where, src, path)
            dist.bind(_numeric(frame, col, where, src, bound))
    _check_context_lengths(ld)
    ld.bandwidth_traces = []
    for i, group in enumerate(sc.clients):
        trace = None
        if group.link.trace:
            trace = _load_bandwidth(ld, group.link.trace, f"clients.{i}.link.trace")
        ld.bandwidth_traces.append(trace)


def _check_context_lengths(ld: LoadedScenario) -> None:
    """Requests must fit the model's context: prompt (plus output when generating)."""
    trace = ld.arrival_trace
    for i, cls in enumerate(ld.scenario.workload.mix):
        if cls.task == "synthetic":
            continue
        model = ld.models[cls.model]  # type: ignore[index]
        generate = cls.task == "generate"
        if trace is not None:
            longest = trace["prompt_tokens"] + (trace["output_tokens"] if generate else 0)
            tokens, where = float(longest.max()), "workload.arrival.path"
            if ld.scenario.workload.arrival.prompt_scale != 1:
                where += " (with workload.arrival.prompt_scale)"
        else:
            tokens = cls.prompt_tokens.upper + (cls.output_tokens.upper if generate else 0)
            where = f"workload.mix.{i}.prompt_tokens"
        problem = model.context_error(tokens, generate)
        if problem:
            raise UserError(
                f"{ld.source}: {where}: {problem}; bound the distribution (e.g. max:) or pick "
                "a model with a longer context"
            )


def _load_arrival_trace(ld: LoadedScenario, rel: str, where: str) -> pd.DataFrame:
    frame, path = _csv(ld, rel, where)
    cols = {k: _pick(frame, names, where, ld.source, path) for k, names in TRACE_COLUMNS.items()}
    time_col = cols["arrival_s"]
    t = frame[time_col]
    if not pd.api.types.is_numeric_dtype(t):
        parsed = pd.to_datetime(t, errors="coerce")
        if parsed.isna().any():
            raise UserError(f"{ld.source}: {where}: column '{time_col}' must hold times")
        t = (parsed - parsed.min()).dt.total_seconds()
    src = ld.source
    out = pd.DataFrame(
        {
            "arrival_s": _numeric(pd.DataFrame({time_col: t}), time_col, where, src,
                                  limits.TRACE_TIME_S),
            "prompt_tokens": _numeric(frame, cols["prompt_tokens"], where, src, limits.TOKENS),
            "output_tokens": _numeric(frame, cols["output_tokens"], where, src,
                                      limits.OUTPUT_TOKENS),
        }
    )  # fmt: skip
    return out.sort_values("arrival_s", kind="stable").reset_index(drop=True)


def _load_bandwidth(ld: LoadedScenario, rel: str, where: str) -> np.ndarray:
    frame, path = _csv(ld, rel, where)
    cols = [_pick(frame, (c,), where, ld.source, path) for c in BANDWIDTH_COLUMNS]
    t = _numeric(frame, cols[0], where, ld.source, limits.TRACE_TIME_S)
    if np.any(np.diff(t) <= 0):
        raise UserError(f"{ld.source}: {where}: time_s must increase strictly")
    up = _numeric(frame, cols[1], where, ld.source, limits.BANDWIDTH_MBPS)
    down = _numeric(frame, cols[2], where, ld.source, limits.BANDWIDTH_MBPS)
    return np.column_stack([t, up, down])


def effective_dict(loaded: LoadedScenario) -> dict:
    """The scenario with every default filled in, as plain data for `scenario.yaml`."""
    out = loaded.scenario.model_dump(mode="python", exclude_none=False)
    if loaded.scenario.simulation == type(loaded.scenario.simulation)():
        del out["simulation"]  # request granularity, all defaults: files and hashes as before
    for group in out["clients"]:
        if group["weight_dtype"] is None:  # unset: the model's own precision, as before
            del group["weight_dtype"]
    if out["workload"]["arrival"]["prompt_scale"] == 1:  # unset: prompts as recorded
        del out["workload"]["arrival"]["prompt_scale"]
    for group in out["clients"]:
        if not group["sites"]:  # no fleet sites: as before
            del group["sites"]
    if out["servers"] is None:  # one server: as before
        del out["servers"], out["routing"]
    else:
        del out["server"]
    return out
