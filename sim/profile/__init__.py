"""Measure a model's per-unit costs on this machine (`splitsim profile`).

`sim.profile.measure` needs PyTorch and transformers (the `profile` extra) and is imported
only when profiling; `sim.profile.factors` (fitting device factors) needs numpy only.
"""

INSTALL_HINT = 'profiling needs the profile extra: pip install -e ".[profile]"'


def missing_extra() -> str | None:
    """The install hint if torch or transformers is missing, else None."""
    import importlib.util

    for name in ("torch", "transformers"):
        if importlib.util.find_spec(name) is None:
            return INSTALL_HINT
    return None
