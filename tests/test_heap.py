"""`sim.engine.heap`: runs keep long-lived objects out of the cycle collector's scans and
leave nothing frozen behind (a sweep running many scenarios in one process frees them)."""

from __future__ import annotations

import gc

from sim.engine.heap import freeze_now, frozen_heap


def test_blocks_nest_and_the_outermost_unfreezes():
    assert gc.get_freeze_count() == 0
    keep = [object() for _ in range(10)]
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen >= len(keep)
        with frozen_heap():
            more = [[] for _ in range(100)]  # noqa: F841  (alive: frozen by freeze_now)
            freeze_now()
            assert gc.get_freeze_count() > frozen
        assert gc.get_freeze_count() > 0  # the inner block left the outer's objects frozen
    assert gc.get_freeze_count() == 0
    freeze_now()  # outside a block: nothing happens
    assert gc.get_freeze_count() == 0


def test_a_run_leaves_nothing_frozen(tmp_path):
    import yaml

    from sim.config import load_scenario
    from sim.runner import simulate

    body = {
        "name": "heap", "seed": 1, "requests": 30, "server": {"device": "a100-80gb"},
        "clients": [{"name": "c", "count": 2, "device": "laptop-m2",
                     "link": {"uplink_mbps": 50, "downlink_mbps": 100, "rtt_ms": 10}}],
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": 5.0},
                     "mix": [{"name": "b", "model": "gpt2", "task": "forward",
                              "prompt_tokens": 64, "deadline_factor": 3.0}]},
    }  # fmt: skip
    for granularity in ("request", "token"):
        body["simulation"] = {"granularity": granularity}
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(body))
        assert simulate(load_scenario(path)).summary["completed"].gt(0).all()
        assert gc.get_freeze_count() == 0
