"""Figures and reports from splitsim result folders (never imports the engine).

Modules: `io` reads a run, sweep or capacity folder into DataFrames by the column names in
`sim.records`; `figures` holds the `FIGURES` registry and re-exports every figure function
(DataFrame in, Figure out), each defined by the tables it draws: `cost_figures`
(unit_costs.csv), `static_figures` (allocation.csv), `sweep_figures` (sweep_ci.csv,
capacity_ci.csv) and `run_figures` (requests.csv, timeseries.csv); `draw` holds the drawing
helpers they share; `style` the look (Okabe–Ito colours, a fixed style per policy, single
column width) and `save_figure()`; `plot` draws every figure a folder supports, which is
what `splitsim plot DIR` runs. From `sim` this package imports only `sim.records` and
`sim.stats`.
"""
