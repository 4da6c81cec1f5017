"""The split problem, its allocators and their registry (the `sim.split` contract)."""

from sim.split.build import Link, build_problem, resident_units
from sim.split.dp import fastest_placement, grid_steps
from sim.split.policies import LOAD_AWARE, POLICIES, solve
from sim.split.problem import Plan, SplitProblem, evaluate, evaluate_many

__all__ = [
    "LOAD_AWARE",
    "POLICIES",
    "Link",
    "Plan",
    "SplitProblem",
    "build_problem",
    "evaluate",
    "evaluate_many",
    "fastest_placement",
    "grid_steps",
    "resident_units",
    "solve",
]
