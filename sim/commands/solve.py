"""`splitsim solve`: one request's placement under a policy, beside server_only and greedy."""

from __future__ import annotations

import argparse

from sim import limits as lim
from sim.catalog import get_device, get_model
from sim.commands.table import format_table
from sim.costs import model_units
from sim.costs.precision import own_precision
from sim.errors import UserError
from sim.split import POLICIES, Link, build_problem, solve
from sim.split.dp import MAX_STEPS


def _resident(text: str):
    if text in ("all", "none", "fit"):
        return text
    if text.isdigit() and lim.RESIDENT_UNITS.contains(int(text)):
        return {"first": int(text)}
    raise UserError(
        f"--resident: expected all, none, fit or a unit count from 0 to "
        f"{lim.RESIDENT_UNITS.hi:g}, got '{text}'"
    )


def _check_request(args: argparse.Namespace, model, task: str) -> None:
    """What the flags' own ranges cannot see: the model's context, the DP grid's size."""
    tokens = args.tokens + (args.output_tokens if task == "generate" else 0)
    problem = model.context_error(tokens, task == "generate")
    if problem:
        flag = "--tokens/--output-tokens" if task == "generate" else "--tokens"
        raise UserError(f"{flag}: {problem}")
    if task == "forward" and args.output_tokens:
        raise UserError("--output-tokens: only with --task generate")
    finest = args.deadline_s / MAX_STEPS
    if args.time_step_s is not None and args.time_step_s < finest:
        raise UserError(
            f"--time-step-s: at most {MAX_STEPS:,} steps per deadline: must be >= {finest:g} s "
            f"for --deadline-s {args.deadline_s:g}"
        )


def _with_table(device, path: str | None, flag: str):
    """The device with a cost table attached (checked now, so errors name the flag)."""
    if path is None:
        return device
    from pathlib import Path

    from sim.costs.tables import load_cost_table

    try:
        load_cost_table(path).device_for(device.name)
    except UserError as err:
        raise UserError(f"{flag}: {err}") from None
    return device.model_copy(update={"cost_table": str(Path(path).resolve())})


def solve_request(args: argparse.Namespace) -> tuple:
    """The placement problem of `splitsim solve`'s flags, the model's units, and the plans of
    the policy, server_only and greedy (the Python API's `sim.solve` too)."""
    model = get_model(args.model, "--model")
    client = get_device(args.client, "--client")
    server = get_device(args.server, "--server")
    POLICIES.get(args.policy, "--policy")
    client = _with_table(client, getattr(args, "client_cost_table", None), "--client-cost-table")
    server = _with_table(server, getattr(args, "server_cost_table", None), "--server-cost-table")
    task = args.task or ("generate" if args.output_tokens > 0 else "forward")
    _check_request(args, model, task)
    client_dtype = getattr(args, "client_weight_dtype", None)
    if client.cost_table is not None and not own_precision(model, client_dtype):
        raise UserError(
            f"--client-weight-dtype: {client_dtype} differs from the model's "
            f"{model.weight_dtype}, but the client's cost table was measured at one precision; "
            "drop one of the two"
        )
    try:
        problem = build_problem(
            model,
            task,
            args.tokens,
            args.output_tokens,
            client,
            server,
            Link(args.uplink_mbps, args.downlink_mbps, args.rtt_ms),
            args.deadline_s,
            resident=_resident(args.resident),
            objective=args.objective,
            granularity=args.granularity,
            client_weight_dtype=client_dtype,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    units = model_units(model, args.granularity)
    shown = [args.policy] + [p for p in ("server_only", "greedy") if p != args.policy]
    plans = {name: solve(problem, name, args.time_step_s) for name in shown}
    return problem, units, plans


def run_solve(args: argparse.Namespace) -> int:
    problem, units, plans = solve_request(args)
    model, client, server = (get_model(args.model, "--model"), get_device(args.client, "--client"),
                             get_device(args.server, "--server"))  # fmt: skip
    task = args.task or ("generate" if args.output_tokens > 0 else "forward")
    client_dtype = getattr(args, "client_weight_dtype", None)
    main = plans[args.policy]
    print(
        f"{model.name} {task}, {args.tokens} tokens"
        + (f" + {args.output_tokens} out" if task == "generate" else "")
        + f"; client {client.name}"
        + ("" if own_precision(model, client_dtype) else f" ({client_dtype} weights)")
        + f", server {server.name}; deadline {args.deadline_s:g} s"
    )
    rows = [
        (u.name, "client" if c else "server", problem.client_time[i], problem.server_time[i])
        for i, (u, c) in enumerate(zip(units, main.on_client, strict=True))
    ]
    print(format_table(("unit", f"{args.policy}", "client_s", "server_s"), rows))
    print()
    summary = [
        (name, p.latency, p.server_work, p.feasible, p.client_units, p.switches)
        for name, p in plans.items()
    ]
    print(
        format_table(
            ("policy", "latency_s", "server_work", "feasible", "client_units", "switches"), summary
        )
    )
    return 0
