"""The `splitsim` command line: parses arguments, dispatches, turns user errors into one line."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence

from sim import limits as lim
from sim.catalog.specs import DTYPE_BYTES
from sim.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_solve(sub) -> None:
    p = sub.add_parser("solve", help="place one request's units with a policy and compare")
    p.add_argument("--model", required=True, help="catalog model name (splitsim catalog models)")
    p.add_argument(
        "--task",
        default=None,
        choices=["forward", "generate"],
        help="default: generate for decoder LMs with --output-tokens, else forward",
    )
    p.add_argument("--tokens", type=lim.TOKENS.arg("--tokens"), required=True,
                   help="prompt / sequence length")  # fmt: skip
    p.add_argument("--output-tokens", type=lim.OUTPUT_TOKENS.arg("--output-tokens"), default=0,
                   help="tokens to generate")  # fmt: skip
    p.add_argument("--client", required=True, help="client device name")
    p.add_argument("--server", required=True, help="server device name")
    p.add_argument("--uplink-mbps", type=lim.BANDWIDTH_MBPS.arg("--uplink-mbps"), required=True)
    p.add_argument("--downlink-mbps", type=lim.BANDWIDTH_MBPS.arg("--downlink-mbps"),
                   required=True)  # fmt: skip
    p.add_argument("--rtt-ms", type=lim.RTT_MS.arg("--rtt-ms"), default=0.0)
    p.add_argument("--deadline-s", type=lim.DEADLINE_S.arg("--deadline-s"), required=True,
                   help="SLA on end-to-end latency")  # fmt: skip
    p.add_argument("--policy", default="dp", help="policy to show in full (default dp)")
    p.add_argument("--resident", default="all", help="units the client holds: all, none, fit, or K")
    p.add_argument("--client-weight-dtype", default=None, choices=list(DTYPE_BYTES),
                   help="precision of the client's copy of the weights (default: the model's)")  # fmt: skip
    p.add_argument("--granularity", default="block", choices=["block", "sublayer"])
    p.add_argument("--objective", default="server_time", choices=["server_time", "server_flops"])
    p.add_argument("--time-step-s", type=lim.TIME_STEP_S.arg("--time-step-s"), default=None,
                   help="dp_grid's grid (default deadline/2000; at most 100,000 steps); dp is exact")  # fmt: skip
    p.add_argument("--client-cost-table", default=None, metavar="CSV",
                   help="time the client's units from this measured cost table (splitsim profile)")  # fmt: skip
    p.add_argument("--server-cost-table", default=None, metavar="CSV",
                   help="time the server's units from this measured cost table")  # fmt: skip


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="run a scenario and write its result folder")
    run.add_argument("scenario", help="scenario YAML file")
    run.add_argument("-o", "--output", default=None, help="result folder (default: runs/<name>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario value, e.g. workload.arrival.rate_per_s=30")  # fmt: skip
    run.add_argument("--quiet", action="store_true", help="no progress bar or table")
    check = sub.add_parser("check", help="validate a scenario and print it with every default")
    check.add_argument("scenario")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def build_parser() -> argparse.ArgumentParser:
    from sim.commands.calibrate import add_calibrate_parser
    from sim.commands.paper import add_paper_parser
    from sim.commands.plot import add_plot_parser
    from sim.commands.profile import add_profile_parser
    from sim.commands.sweep import add_sweep_parsers

    parser = _Parser(prog="splitsim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_solve(sub)
    _add_run(sub)
    add_sweep_parsers(sub)
    add_plot_parser(sub)
    add_paper_parser(sub)
    add_profile_parser(sub)
    add_calibrate_parser(sub)
    cat = sub.add_parser("catalog", help="list built-in models, devices or policies")
    cat.add_argument("what", choices=["models", "devices", "policies"])
    cat.add_argument("--scenario", default=None,
                     help="also list a scenario's own models and devices (cost tables attached)")  # fmt: skip
    return parser


# command -> (module, function); modules load on use so `splitsim --help` stays fast
_COMMANDS = {
    "solve": ("sim.commands.solve", "run_solve"),
    "run": ("sim.commands.run", "run_run"),
    "check": ("sim.commands.run", "run_check"),
    "sweep": ("sim.commands.sweep", "run_sweep_cmd"),
    "capacity": ("sim.commands.sweep", "run_capacity_cmd"),
    "plot": ("sim.commands.plot", "run_plot"),
    "paper": ("sim.commands.paper", "run_paper"),
    "catalog": ("sim.commands.catalog", "run_catalog_args"),
    "profile": ("sim.commands.profile", "run_profile"),
    "calibrate": ("sim.commands.calibrate", "run_calibrate"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `splitsim` console script."""
    args = build_parser().parse_args(argv)
    module, function = _COMMANDS[args.command]
    try:
        return getattr(importlib.import_module(module), function)(args)
    except UserError as err:
        print(f"splitsim: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`splitsim catalog devices | head`)
        _silence_stdout()
        return 141  # as a process killed by SIGPIPE
    except KeyboardInterrupt:  # Ctrl-C: partial results were discarded on the way out
        print("splitsim: interrupted; nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            "splitsim: error: out of memory; make the run smaller (requests, duration_s, "
            "replications) or stop overload early with simulation.max_in_flight",
            file=sys.stderr,
        )
        return 1
    except Exception as err:  # a bug: one line and a saved traceback, unless debugging
        if os.environ.get("SPLITSIM_DEBUG") == "1":
            raise
        print(internal_error_line(err), file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point standard output at the null device, so that flushing it at exit does not fail
    again on the closed pipe (Python's documented recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):  # no real file behind stdout
        pass


def _save_traceback(err: BaseException) -> str:
    """Write the traceback of `err` to a temporary file; its path, or why it could not be."""
    text = "".join(traceback.format_exception(err))
    try:
        fd, path = tempfile.mkstemp(prefix="splitsim-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
    except OSError as save_err:
        return f"nowhere ({save_err.strerror}); rerun with SPLITSIM_DEBUG=1 to see it"
    return path


def internal_error_line(err: Exception) -> str:
    """The one line for an unexpected exception: its type and message, where the traceback
    is (a failed run's manifest, else a temporary file) and what happened to the results."""
    where = getattr(err, "splitsim_traceback", None) or _save_traceback(err)
    message = " ".join(str(err).split())
    note = getattr(err, "splitsim_note", None)
    tail = f"; {note}" if note else ""
    return (
        f"splitsim: internal error: {type(err).__name__}: {message} "
        f"(a bug; please report it; traceback in {where}{tail})"
    )


if __name__ == "__main__":  # `python -m sim.cli` as well as `python -m sim`
    raise SystemExit(main())
