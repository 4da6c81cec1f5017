"""The cost model: per-unit FLOPs, bytes and activation sizes, and their time on devices."""

from sim.costs.kernels import kernel_counts, unit_kernels, unit_overheads_s
from sim.costs.roofline import (
    crossing_s,
    loop_time_s,
    roofline_s,
    summed_roofline_s,
    transfer_times_s,
    unit_times_s,
)
from sim.costs.units import Granularity, Unit, model_units, param_count, unit_params
from sim.costs.work import Pass, RequestWork, Task, request_work

__all__ = [
    "Granularity",
    "Pass",
    "RequestWork",
    "Task",
    "Unit",
    "crossing_s",
    "kernel_counts",
    "loop_time_s",
    "model_units",
    "param_count",
    "request_work",
    "roofline_s",
    "summed_roofline_s",
    "transfer_times_s",
    "unit_times_s",
    "unit_kernels",
    "unit_overheads_s",
    "unit_params",
]
