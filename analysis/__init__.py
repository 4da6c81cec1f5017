"""Figures and reports from splitsim result folders (never imports the engine).

Modules: `io` reads a run, sweep or capacity folder into DataFrames by the column names in
`sim.records`; `figures` holds one function per figure (DataFrame in, Figure out) and the
`FIGURES` registry; `style` the look (Okabe–Ito colours, a fixed style per policy, single
column width) and `save_figure()`; `plot` draws every figure a folder supports, which is
what `splitsim plot DIR` runs. From `sim` this package imports only `sim.records` and
`sim.stats`.
"""
