"""The growth bench's baselines: which runs it adds and where it puts the crossover."""

from __future__ import annotations

import math

from bench.growth_vs_scratch import SIZES, baseline_runs, baseline_stages, crossover


def test_small_only_at_every_seed_and_both_shapes_at_cheaper_budgets_with_the_first_seed():
    runs = baseline_runs([1, 2], [0.25, 0.5, 1.0])
    assert runs == [
        ("small-s1", "small", 1.0, 1),
        ("small-s2", "small", 1.0, 2),
        ("large-b0.25-s1", "large", 0.25, 1),
        ("small-b0.25-s1", "small", 0.25, 1),
        ("large-b0.5-s1", "large", 0.5, 1),
        ("small-b0.5-s1", "small", 0.5, 1),
    ]


def test_a_baseline_spends_the_budget_in_its_own_shape():
    size = SIZES["large"]
    small = baseline_stages(size, "small", 1e13)
    large = baseline_stages(size, "large", 1e13)
    assert small[0]["model"] == size.small and large[0]["model"] == size.large
    # the small shape costs less per token, so the same FLOPs buy it more tokens
    assert small[0]["tokens"] > 3 * large[0]["tokens"]
    assert small[0]["tokens"] % size.tokens_per_step == 0


def test_the_crossover_is_where_the_scratch_target_starts_to_win_in_log_flops():
    # scratch - small-only: +0.1 at 1e13, -0.1 at 4e13 -> halfway in log FLOPs, 2e13
    text = crossover([(4e13, 2.7, 2.8), (1e13, 3.1, 3.0)])
    value = float(text.split("~")[1].split()[0])
    assert math.isclose(value, 2e13, rel_tol=1e-2)
    assert "every budget" in crossover([(1e13, 3.0, 3.1), (2e13, 2.9, 3.0)])
    assert "small-only model beats" in crossover([(1e13, 3.1, 3.0), (2e13, 3.0, 2.9)])
