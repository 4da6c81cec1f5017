"""Every number a user can give, with its finite, sensible range: declared once, here.

A `Bound` is used three ways: as a pydantic field type in the scenario, spec and sweep
schemas (`bound.type`), as an argparse `type=` for the command-line flags that set the same
quantity (`bound.arg(flag)`), and by the generated bad-input tests, which find every bound
in the schemas and try values outside it. A value that passes a bound must run; one that
does not gets one line saying what is allowed. Booleans are never numbers, NaN and
infinities are never accepted (except where a bound says `inf_ok`, e.g. "no upper clip").
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator


def _fmt(x: float) -> str:
    """A bound's number as people write it: 1000000, 0.5, 1e-06."""
    if float(x).is_integer() and abs(x) < 1e13:
        return str(int(x))
    return f"{x:g}"


@dataclass(frozen=True)
class Bound:
    """A closed or half-open numeric range; `integer` bounds take whole numbers only."""

    lo: float
    hi: float
    lo_open: bool = False
    integer: bool = False
    inf_ok: bool = False  # `.inf` accepted as "unbounded" (only where the code handles it)

    def describe(self) -> str:
        """What is allowed, e.g. 'a number > 0 and <= 1e+06'."""
        kind = "an integer" if self.integer else "a number"
        low = f"> {_fmt(self.lo)}" if self.lo_open else f">= {_fmt(self.lo)}"
        high = f"<= {_fmt(self.hi)}" + (" (or .inf)" if self.inf_ok else "")
        return f"{kind} {low} and {high}"

    def contains(self, x: float) -> bool:
        above = x > self.lo if self.lo_open else x >= self.lo
        return above and x <= self.hi

    def contains_array(self, x: np.ndarray) -> np.ndarray:
        """`contains` elementwise, for columns of a CSV file."""
        above = x > self.lo if self.lo_open else x >= self.lo
        return above & (x <= self.hi)

    def parse(self, value: Any) -> int | float:
        """The value as a number inside the bound, or ValueError saying what is allowed."""
        if isinstance(value, bool) or value is None:
            raise ValueError(f"must be {self.describe()}, got {value!r}")
        try:
            x = float(value) if isinstance(value, str) else value
            x = float(x) if not isinstance(x, int) else x
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"must be {self.describe()}, got {value!r}") from None
        if self.inf_ok and x == math.inf:
            return x
        if isinstance(x, float) and not math.isfinite(x):
            raise ValueError(f"must be {self.describe()}, got {value!r}")
        if self.integer:
            if isinstance(x, float) and not x.is_integer():
                raise ValueError(f"must be {self.describe()}, got {value!r}")
            x = int(x)
        if not self.contains(x):
            raise ValueError(f"must be {self.describe()}, got {value!r}")
        return x

    def _parse_optional(self, value: Any) -> int | float | None:
        return None if value is None else self.parse(value)

    @property
    def type(self) -> Any:
        """The pydantic field type (the Bound rides along as metadata, for the tests)."""
        base = int if self.integer else float
        return Annotated[base, self, BeforeValidator(self.parse)]

    @property
    def optional(self) -> Any:
        """The pydantic field type allowing null (one message, not one per union branch)."""
        base = int if self.integer else float
        return Annotated[base | None, self, BeforeValidator(self._parse_optional)]

    def arg(self, flag: str):
        """An argparse `type=` that checks this bound and names `flag` in its one-line error."""

        def convert(text: str) -> int | float:
            try:
                return self.parse(text)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        convert.__name__ = flag  # argparse names the type in some messages
        convert.bound = self  # type: ignore[attr-defined]  # for the generated flag tests
        return convert


def column_in_bound(frame: Any, col: str, where: str, bound: Bound) -> np.ndarray:
    """A CSV column (a pandas frame's) as floats, each finite and inside `bound`, else one line."""
    import pandas as pd

    from sim.errors import UserError

    values = pd.to_numeric(frame[col], errors="coerce").to_numpy(float)
    ok = np.isfinite(values)
    ok[ok] = bound.contains_array(values[ok])
    if bound.integer:
        ok[ok] = values[ok] == np.floor(values[ok])
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        allowed = bound.describe().replace("a number", "numbers", 1)
        allowed = allowed.replace("an integer", "integers", 1)
        raise UserError(
            f"{where}: column '{col}' must hold {allowed}; data row {row + 1} has "
            f"{frame[col].iloc[row]!r}"
        )
    return values


def bound_of(metadata: list) -> Bound | None:
    """The Bound among a pydantic field's metadata, if any (used by the generated tests)."""
    return next((m for m in metadata if isinstance(m, Bound)), None)


# ---- the ranges -------------------------------------------------------------------------
# Simulated time and counts: large enough for any study this tool is meant for, small
# enough that a run asking for the maximum still ends (other bounds cap the arrivals).
SEED = Bound(0, 2**63 - 1, integer=True)
REQUESTS = Bound(1, 10_000_000, integer=True)
DURATION_S = Bound(0, 1e7, lo_open=True)  # about 116 days
TIME_S = Bound(0, 1e7)  # warm-up, drain, trace start
TRACE_TIME_S = Bound(0, 1e10)  # a time column of a trace file
REPLICATIONS = Bound(1, 1000, integer=True)
NAME_MAX_CHARS = 100
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # a safe file name: no '/', no leading '.'


def _check_name(value: Any) -> str:
    if (
        not isinstance(value, str)
        or len(value) > NAME_MAX_CHARS
        or not re.fullmatch(NAME_PATTERN, value)
    ):
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "..."
        raise ValueError(
            f"must be 1-{NAME_MAX_CHARS} letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit (it names the folder runs/<name>), got {shown!r}"
        )
    return value


# A scenario's or sweep's name: it becomes a folder name, so it is a safe file name.
NAME = Annotated[str, BeforeValidator(_check_name)]

# Server and clients
SLOTS = Bound(1, 4096, integer=True)
SERVERS = Bound(1, 1024, integer=True)  # identical servers of one fleet group
QUEUE = Bound(1, 10_000_000, integer=True)
CLIENTS = Bound(1, 1_000_000, integer=True)
RESIDENT_UNITS = Bound(0, 100_000, integer=True)
PINNED_UNITS = Bound(1, 100_000, integer=True)  # client_required: {first: K}
BANDWIDTH_MBPS = Bound(0, 1e6, lo_open=True)  # up to 1 Tbit/s
RTT_MS = Bound(0, 60_000)  # a minute
DELAY_MS = Bound(0, 60_000)

# Workload
RATE_PER_S = Bound(0, 1e6, lo_open=True)
LOAD = Bound(0, 100, lo_open=True)
TIME_SCALE = Bound(0, 1e6, lo_open=True)
LENGTH_SCALE = Bound(0, 100, lo_open=True)  # trace prompt lengths x this
DEADLINE_S = Bound(1e-6, 1e6)
DEADLINE_FACTOR = Bound(0.01, 1e4)
SPEEDUP = Bound(0, 1e3, lo_open=True)  # a device's speed-up of some units (studies.yaml)
LINK_RATIO = Bound(0, 1e3, lo_open=True)  # downlink per uplink bandwidth (studies.yaml)
WEIGHT = Bound(0, 1e6, lo_open=True)
TOKENS = Bound(1, 10_000_000, integer=True)  # a prompt or a context
OUTPUT_TOKENS = Bound(0, 10_000_000, integer=True)
SERVICE_S = Bound(0, 1e6, lo_open=True)

# Distributions (generic; the field that holds one checks its support, e.g. prompts >= 1)
DIST_VALUE = Bound(0, 1e9)
DIST_SCALE = Bound(0, 1e9, lo_open=True)  # a median or a mean
DIST_MAX = Bound(0, 1e9, lo_open=True, inf_ok=True)  # .inf: no upper clip
LOG_SIGMA = Bound(0, 10)

# Planning
TIME_STEP_S = Bound(1e-9, 1e3)
FRACTION_OPEN = Bound(0, 1, lo_open=True)  # (0, 1]
FRACTION = Bound(0, 1)  # [0, 1]
FRACTION_BELOW_ONE = Bound(0, 0.999)  # [0, 1): slack, cache buckets

# Token granularity
BATCH_REQUESTS = Bound(1, 65_536, integer=True)
BATCH_TOKENS = Bound(1, 10_000_000, integer=True)
MEMORY_GB = Bound(0, 1e6, lo_open=True)

# Output
TIMESERIES_BINS = Bound(1, 100_000, integer=True)

# Models (the largest published transformers are far inside these)
LAYERS = Bound(1, 1024, integer=True)
DECODER_LAYERS = Bound(0, 1024, integer=True)
HIDDEN_SIZE = Bound(1, 131_072, integer=True)
HEADS = Bound(1, 1024, integer=True)
HEAD_DIM = Bound(1, 4096, integer=True)
MLP_SIZE = Bound(1, 1_048_576, integer=True)
VOCAB_SIZE = Bound(1, 10_000_000, integer=True)
POSITIONS = Bound(1, 10_000_000, integer=True)
TOKEN_TYPES = Bound(0, 1024, integer=True)
LABELS = Bound(1, 1_000_000, integer=True)
IMAGE_PIXELS = Bound(1, 100_000, integer=True)
CHANNELS = Bound(1, 1024, integer=True)

# Devices
PEAK_TFLOPS = Bound(0, 1e5, lo_open=True)
MEMORY_BANDWIDTH_GB_S = Bound(0, 1e6, lo_open=True)
EFFICIENCY = FRACTION_OPEN
OVERHEAD_US = Bound(0, 1e6)  # a second per unit per pass
KERNEL_OVERHEAD_US = Bound(0, 1e5)  # a tenth of a second per kernel launched
NON_OVERLAP = FRACTION  # [0, 1]: 0 the roofline max, 1 compute and memory time added
POWER_W = Bound(0, 1e5, lo_open=True)
RADIO_NJ_PER_BIT = Bound(0, 1e6)

# Measured cost tables
UNIT_INDEX = Bound(-1, 100_000, integer=True)
UNIT_SECONDS = Bound(0, 3600, lo_open=True)
ENERGY_J = Bound(0, 1e9)
BATCH = Bound(1, 65_536, integer=True)

# Sweeps and capacity searches
RANGE_ENDPOINT = Bound(-1e12, 1e12)
RANGE_NUM = Bound(1, 10_000, integer=True)
REL_TOL = Bound(1e-4, 1)
EVALUATIONS = Bound(1, 200, integer=True)

# Execution of sweeps (the cores bound --jobs further unless --oversubscribe)
JOBS = Bound(1, 1_000_000, integer=True)  # checked_jobs: at most the cores, see --oversubscribe
DASK_TIMEOUT_S = Bound(0, 600, lo_open=True)

# Memory-safe overload stop
IN_FLIGHT = Bound(1, 100_000_000, integer=True)

# Profiling
REPEATS = Bound(1, 10_000, integer=True)
WARMUP = Bound(0, 10_000, integer=True)
THREADS = Bound(1, 1024, integer=True)
