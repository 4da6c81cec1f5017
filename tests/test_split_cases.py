"""Small split problems worked by hand: each answer's arithmetic is in the comments.

Most numbers are binary fractions (halves, quarters) so sums are exact; the float cases
use 0.1-multiples on purpose.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sim.errors import UserError
from sim.split import POLICIES, Plan, SplitProblem, evaluate, solve

ALL_POLICIES = ["dp", "greedy", "greedy_ratio", "best_cut", "server_only", "client_only"]
C, S = True, False  # on_client values


def placement(*locs: bool) -> list[bool]:
    return list(locs)


# --- dp beats single cuts: client -> server -> client -> server ----------------------------


def zigzag_problem() -> SplitProblem:
    # Units 1 and 3 are cheap on the server (1) but dear on the client (10); the links are
    # cheap (0.5) exactly where the zigzag crosses: up[1], dn[2], up[3], dn[4].
    return SplitProblem(
        client_time=[1, 10, 1, 10],
        server_time=[1, 1, 1, 1],
        server_work=[1, 1, 1, 1],
        uplink_time=[1, 0.5, 2, 0.5, 2],
        downlink_time=[2, 2, 0.5, 2, 0.5],
        deadline=6.0,
    )


def test_dp_finds_a_placement_that_switches_four_times():
    p = zigzag_problem()
    plan = solve(p, "dp", time_step=0.5)  # every time is a whole number of half seconds
    # C S C S: 1 (u0) + 0.5 (up[1]) + 1 (u1) + 0.5 (dn[2]) + 1 (u2) + 0.5 (up[3]) + 1 (u3)
    #          + 0.5 (dn[4]) = 6.0 = deadline; work = 1 (u1) + 1 (u3) = 2.
    # Units 1 and 3 on the client cost 10 > 6 each, so both must be on the server (work >= 2)
    # and this is the only placement with work 2.
    assert plan.on_client.tolist() == [C, S, C, S]
    assert plan.latency == 6.0
    assert plan.server_work == 2.0
    assert plan.feasible
    assert plan.switches == 4
    # The default grid (deadline / 2000 = 0.003 s) rounds 1 s up to 334 steps, so the exact
    # fit is lost there; with deadline 6.25 the default step 0.003125 divides every time.
    loose = replace(p, deadline=6.25)
    assert solve(loose, "dp").on_client.tolist() == [C, S, C, S]


def test_single_cut_policies_cannot_zigzag():
    p = zigzag_problem()
    # Prefix k on the client, the rest on the server:
    #   k=0: up[0] 1 + 4 x 1 + dn[4] 0.5                = 5.5 fits, work 4
    #   k=1: 1 + up[1] 0.5 + 3 x 1 + dn[4] 0.5          = 5.0 fits, work 3
    #   k=2: 1 + 10 + up[2] 2 + 2 x 1 + dn[4] 0.5       = 15.5 > 6
    #   k=3: 1 + 10 + 1 + up[3] 0.5 + 1 + dn[4] 0.5     = 14.0 > 6
    #   k=4: 1 + 10 + 1 + 10                            = 22.0 > 6
    best = solve(p, "best_cut")
    assert best.on_client.tolist() == [C, S, S, S]
    assert (best.latency, best.server_work) == (5.0, 3.0)
    greedy = solve(p, "greedy")  # k=2 breaks the SLA, so it stops at k=1
    assert (greedy.latency, greedy.server_work) == (5.0, 3.0)
    assert best.server_work > solve(p, "dp", time_step=0.5).server_work


# --- the baselines -----------------------------------------------------------------------


def test_server_only_and_client_only_latencies():
    p = SplitProblem(
        client_time=[1, 2, 3],
        server_time=[0.5, 0.5, 0.5],
        server_work=[2, 2, 2],
        uplink_time=[0.25, 9, 9, 9],
        downlink_time=[9, 9, 9, 0.125],
        deadline=10.0,
    )
    server = solve(p, "server_only")
    # up[0] 0.25 + 3 x 0.5 + dn[3] 0.125 = 1.875; work 3 x 2 = 6
    assert server.on_client.tolist() == [S, S, S]
    assert (server.latency, server.server_work, server.feasible) == (1.875, 6.0, True)
    assert server.switches == 2
    client = solve(p, "client_only")
    # 1 + 2 + 3 = 6, no link; work 0
    assert client.on_client.tolist() == [C, C, C]
    assert (client.latency, client.server_work, client.feasible) == (6.0, 0.0, True)
    assert client.switches == 0


# --- greedy vs best_cut vs greedy_ratio ----------------------------------------------------


def test_greedy_stops_at_the_first_violation_and_best_cut_finds_a_later_cut():
    p = SplitProblem(
        client_time=[1, 1, 1, 5],
        server_time=[1, 1, 1, 1],
        server_work=[1, 1, 1, 1],
        uplink_time=[0, 0, 10, 0, 0],  # crossing at boundary 2 is dear
        downlink_time=[0, 0, 0, 0, 0],
        deadline=5.0,
    )
    # Prefix k on the client:
    #   k=0: 4 x 1                  = 4 fits  (work 4)
    #   k=1: 1 + 3 x 1              = 4 fits  (work 3)
    #   k=2: 1 + 1 + up[2] 10 + 1+1 = 14 > 5  <- greedy stops here
    #   k=3: 1 + 1 + 1 + 1          = 4 fits  (work 1)
    #   k=4: 1 + 1 + 1 + 5          = 8 > 5
    greedy = solve(p, "greedy")
    assert greedy.on_client.tolist() == [C, S, S, S]
    assert (greedy.latency, greedy.server_work) == (4.0, 3.0)
    best = solve(p, "best_cut")
    assert best.on_client.tolist() == [C, C, C, S]
    assert (best.latency, best.server_work) == (4.0, 1.0)
    # Work 0 would need all four on the client (8 > 5), so 1 is optimal.
    assert solve(p, "dp").server_work == 1.0


def test_greedy_ratio_offloads_by_work_saved_per_second():
    p = SplitProblem(
        client_time=[3, 1.25, 1.5],
        server_time=[1, 1, 1],
        server_work=[3, 2, 2],
        deadline=5.0,  # links are free
    )
    # All on the server: 3. Moving a unit adds client - server time:
    #   u0: +2 saves 3 (ratio 1.5); u1: +0.25 saves 2 (ratio 8); u2: +0.5 saves 2 (ratio 4).
    # greedy_ratio: u1 (lat 3.25), then u2 (lat 3.75), then u0 would make 5.75 > 5: stop.
    ratio = solve(p, "greedy_ratio")
    assert ratio.on_client.tolist() == [S, C, C]
    assert (ratio.latency, ratio.server_work) == (3.75, 3.0)
    # greedy moves prefixes: k=1 is 3 + 1 + 1 = 5 (fits), k=2 is 3 + 1.25 + 1 = 5.25 (> 5).
    greedy = solve(p, "greedy")
    assert greedy.on_client.tolist() == [C, S, S]
    assert (greedy.latency, greedy.server_work) == (5.0, 4.0)
    # Optimum: saving u1 + u2 (4, adds 0.75) beats saving u0 (3, adds 2); both can't fit.
    assert solve(p, "dp").server_work == 3.0


# --- constraints and float exactness -------------------------------------------------------


def test_client_allowed_forces_the_server():
    p = SplitProblem(
        client_time=[1, 1, 1],
        server_time=[4, 4, 4],
        server_work=[4, 4, 4],
        deadline=100.0,
        client_allowed=[True, False, True],
    )
    # With a loose deadline every policy would keep everything on the client, but unit 1
    # cannot be there: best is C S C, work 4, latency 1 + 4 + 1 = 6.
    dp_plan = solve(p, "dp")
    assert dp_plan.on_client.tolist() == [C, S, C]
    assert (dp_plan.latency, dp_plan.server_work) == (6.0, 4.0)
    assert solve(p, "client_only").on_client.tolist() == [C, S, C]
    # Prefix policies can only put unit 0 on the client: C S S, work 8.
    assert solve(p, "greedy").on_client.tolist() == [C, S, S]
    assert solve(p, "best_cut").on_client.tolist() == [C, S, S]
    for name in ALL_POLICIES:
        assert not solve(p, name).on_client[1], name


def exact_deadline_problem(server_link: float) -> SplitProblem:
    return SplitProblem(
        client_time=[0.1, 0.2, 0.3],
        server_time=[0.1, 0.1, 0.1],
        uplink_time=[server_link] * 4,
        downlink_time=[server_link] * 4,
        deadline=0.6,
    )


def test_exact_multiples_of_the_step_are_not_rounded_up():
    # Links of 1 s rule out the server; all on the client is 0.1 + 0.2 + 0.3 = 0.6 exactly
    # on paper (0.6000000000000001 in floats). In steps of 0.1: 1 + 2 + 3 = 6 <= 6, but
    # naive float division gives 0.3 / 0.1 = 2.9999999999999996 and 0.6 / 0.1 = 5.999...,
    # so floor(deadline / step) = 5 would wrongly reject it.
    p = exact_deadline_problem(server_link=1.0)
    plan = solve(p, "dp", time_step=0.1)
    assert plan.on_client.tolist() == [C, C, C]
    assert plan.feasible and plan.server_work == 0.0
    assert plan.latency == pytest.approx(0.6, rel=1e-15)
    assert not plan.notes.get("fallback")


def test_exact_multiples_dp_prefers_the_exact_fit_over_cheaper_latency():
    # Free links: all on the server is 0.3 s (work 0.3), but all on the client is 0.6 s
    # = the deadline with work 0, so dp on a 0.1 grid must choose it.
    p = exact_deadline_problem(server_link=0.0)
    plan = solve(p, "dp", time_step=0.1)
    assert plan.on_client.tolist() == [C, C, C]
    assert plan.server_work == 0.0 and plan.feasible
    # A third of a second is not a binary fraction either: 1/3 + 2/3 = 1 = deadline.
    q = SplitProblem(client_time=[1 / 3, 2 / 3], server_time=[0.1, 0.1], deadline=1.0)
    assert solve(q, "dp", time_step=1 / 3).on_client.tolist() == [C, C]


def test_near_multiple_times_do_not_make_dp_infeasible():
    # One unit: client 1 + 1e-10 s, server 0.5 s, deadline 1 s. The client is over the
    # deadline (by 1e-10 relative, more than the 1e-12 feasibility slack), so the only
    # feasible placement is the server (work 0.5). dp must not snap 1 + 1e-10 s down to
    # 2000 whole steps of 0.0005 s and return the infeasible client placement.
    p = SplitProblem(client_time=[1.0 + 1e-10], server_time=[0.5], deadline=1.0)
    plan = solve(p, "dp")
    assert plan.feasible
    assert plan.on_client.tolist() == [S]
    assert plan.server_work == 0.5


def test_infeasible_problem_falls_back_to_the_fastest_placement():
    p = SplitProblem(
        client_time=[1, 1],
        server_time=[0.5, 2],
        server_work=[1, 1],
        uplink_time=[0.25, 0.25, 0.25],
        downlink_time=[0.25, 0.25, 0.25],
        deadline=1.5,
    )
    # Latencies: C C = 2; S S = 0.25 + 2.5 + 0.25 = 3; S C = 0.25 + 0.5 + 0.25 + 1 = 2;
    # C S = 1 + 0.25 + 2 + 0.25 = 3.5. Fastest is 2, tie broken by work: C C (work 0).
    # 2 > 1.5, so nothing fits.
    for name in ALL_POLICIES:
        plan = solve(p, name)
        assert not plan.feasible, name
        assert plan.notes.get("fallback") is True, name
        assert plan.on_client.tolist() == [C, C], name
        assert (plan.latency, plan.server_work) == (2.0, 0.0), name


def test_unknown_policy_lists_the_known_names():
    p = SplitProblem(client_time=[1], server_time=[1], deadline=2.0)
    with pytest.raises(UserError) as err:
        solve(p, policy="nope")
    message = str(err.value)
    assert "nope" in message
    for name in POLICIES.names():
        assert name in message


@pytest.mark.parametrize(
    ("on_client", "switches"),
    [
        ([C], 0),
        ([S], 2),  # leave the client, return for the output
        ([C, C, C], 0),
        ([S, S, S], 2),
        ([C, S, C], 2),
        ([S, C, S], 4),
        ([C, S, C, S], 4),
        ([S, C, C, S, C], 4),
        ([C, C, S], 2),
    ],
)
def test_plan_switches(on_client, switches):
    plan = Plan(np.array(on_client), latency=0.0, server_work=0.0, feasible=True)
    assert plan.switches == switches
    assert plan.client_units == sum(on_client)


# --- the generation loop --------------------------------------------------------------------


def loop_problem(loop_start: int, deadline: float = 100.0) -> SplitProblem:
    return SplitProblem(
        client_time=[1, 1, 1],
        server_time=[0.5, 0.5, 0.5],
        server_work=[1, 1, 1],
        uplink_time=[0.25, 0.25, 0.25, 0.25],
        downlink_time=[0.25, 0.25, 0.25, 2.0],  # dn[3] includes streaming the tokens
        deadline=deadline,
        loop_start=loop_start,
        loop_uplink_time=1.25,
        loop_downlink_time=1.5,
    )


def test_loop_refund_when_both_ends_are_on_the_server():
    p = loop_problem(loop_start=0)
    # S S S: up[0] 0.25 + 1.5 + dn[3] 2.0 - refund 1.5 = 2.25
    assert evaluate(p, [S, S, S]) == (2.25, 3.0)
    # C C C: 3, no loop cost (the loop never leaves the client)
    assert evaluate(p, [C, C, C]) == (3.0, 0.0)
    # C S S: loop start on the client, so no refund: 1 + 0.25 + 1 + 2.0 = 4.25
    assert evaluate(p, [C, S, S]) == (4.25, 2.0)
    # With loop_start = 1, C S S has both ends on the server: 4.25 - 1.5 = 2.75
    assert evaluate(loop_problem(loop_start=1), [C, S, S]) == (2.75, 2.0)


def test_loop_uplink_when_the_start_is_on_the_server_and_the_end_on_the_client():
    p = loop_problem(loop_start=0)
    # S S C: up[0] 0.25 + 0.5 + 0.5 + dn[2] 0.25 + 1 + loop up 1.25 = 3.75
    assert evaluate(p, [S, S, C]) == (3.75, 2.0)
    # S C C: 0.25 + 0.5 + dn[1] 0.25 + 1 + 1 + 1.25 = 4.25
    assert evaluate(p, [S, C, C]) == (4.25, 1.0)
    # loop_start = 1: C S C = 1 + up[1] 0.25 + 0.5 + dn[2] 0.25 + 1 + 1.25 = 4.25
    assert evaluate(loop_problem(loop_start=1), [C, S, C]) == (4.25, 1.0)


def test_dp_accounts_for_the_loop():
    # loop_start = 0. All eight placements, latency (work), adjustments included:
    #   CCC 3 (0)         CCS 1+1+0.25+0.5+2 = 4.75 (1)   CSC 1+0.25+0.5+0.25+1 = 3 (1)
    #   CSS 1+0.25+0.5+0.5+2 = 4.25 (2)   SCC 0.25+0.5+0.25+1+1 +1.25 = 4.25 (1)
    #   SCS 0.25+0.5+0.25+1+0.25+0.5+2 -1.5 = 3.25 (2)   SSC 0.25+1+0.25+1 +1.25 = 3.75 (2)
    #   SSS 0.25+1.5+2 -1.5 = 2.25 (3)
    # Deadline 2.5: only SSS fits, and only thanks to the refund (3.75 without it).
    plan = solve(loop_problem(0, deadline=2.5), "dp")
    assert plan.on_client.tolist() == [S, S, S]
    assert (plan.latency, plan.server_work, plan.feasible) == (2.25, 3.0, True)
    # Deadline 3.5 with unit 0 pinned to the server: SCC would be 3.0 (work 1) without the
    # extra loop uplink but is 4.25 with it; SSC 3.75 does not fit; SCS 3.25 (work 2) wins
    # over SSS (work 3).
    p = loop_problem(0, deadline=3.5)
    p = replace(p, client_allowed=[False, True, True])
    plan = solve(p, "dp")
    assert plan.on_client.tolist() == [S, C, S]
    assert (plan.latency, plan.server_work, plan.feasible) == (3.25, 2.0, True)


# --- input validation -----------------------------------------------------------------------


GOOD = {"client_time": [1, 1], "server_time": [1, 1], "deadline": 3.0}


@pytest.mark.parametrize(
    "change",
    [
        {"server_time": [1, 1, 1]},  # wrong length
        {"server_work": [1]},
        {"uplink_time": [0, 0]},  # needs L + 1 = 3 entries
        {"downlink_time": [0, 0, 0, 0]},
        {"client_allowed": [True]},
        {"client_time": [1, -1]},  # negative time
        {"server_time": [-0.5, 1]},
        {"uplink_time": [0, -1, 0]},
        {"server_work": [1, -2]},
        {"client_time": [1, float("nan")]},
        {"server_time": [1, float("inf")]},
        {"deadline": 0.0},
        {"deadline": -1.0},
        {"deadline": float("nan")},
        {"client_time": [], "server_time": []},
        {"loop_start": 2},
        {"loop_start": -1},
        {"downlink_time": [0, 0, 1], "loop_downlink_time": 2.0},
    ],
)
def test_invalid_problems_raise_value_error(change):
    with pytest.raises(ValueError):
        SplitProblem(**{**GOOD, **change})


def test_valid_problem_defaults():
    p = SplitProblem(**GOOD)
    assert p.n_units == 2
    assert p.server_work.tolist() == [1.0, 1.0]  # defaults to server_time
    assert p.uplink_time.tolist() == [0.0, 0.0, 0.0]
    assert p.client_allowed.tolist() == [True, True]
    assert not p.has_loop
