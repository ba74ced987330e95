"""The mechanisms of ``agent_node.privacy`` (OpenDP underneath, never seeded here): budgets are
exact, the stated 95 % intervals cover the truth as often as they say, partition selection
releases only keys that are in the data and a lone customer's key (almost) never, and every
calibrated measurement stays within its epsilon by OpenDP's own privacy map."""

from __future__ import annotations

from fractions import Fraction

import pytest

from agent_node import privacy


def test_budgets_are_whole_micro_epsilon_read_from_the_decimal() -> None:
    assert privacy.to_micro(0.7, up=False) == 700_000  # 0.7 * 1e6 is 699999.99... as a float
    assert privacy.to_micro(0.1, up=True) == 100_000
    assert privacy.to_micro(1e-7, up=True) == 1 and privacy.to_micro(1e-7, up=False) == 0
    assert sum(privacy.to_micro(e, up=True) for e in (0.1, 0.2, 0.3, 0.4)) == 1_000_000


def test_intervals_cover_the_truth_as_often_as_stated() -> None:
    # 2000 independent noisy counts of 100: each misses its 95 % interval with probability
    # at most 0.05, so more than 160 misses (6 standard deviations above 100) has
    # probability below 1e-8 if the intervals are honest.
    misses = 0
    for _ in range(2000):
        [released], _ = privacy.noisy_counts([100], 6, Fraction(1, 2))
        low, high = released.interval or (0, 0)
        misses += not low <= 100 <= high
    assert misses <= 160
    # And they are not vacuous: half-width of the discrete Laplace bound at scale 12.
    assert high - low < 2 * 12 * 3.1


def test_partition_selection_releases_only_present_keys() -> None:
    budget = Fraction(1, 2)
    threshold = privacy.selection_threshold(1, budget, 1e-9)
    assert 35 <= threshold <= 45  # "around 50 customers to be released reliably" (docs)
    for _ in range(20):
        chosen = privacy.select_groups({"big": 1000, "alone": 1}, 1, budget, 1e-9)
        # "big" is far above the threshold (noise scale 2: missing it has probability
        # below 1e-100); "alone" passes with probability below delta = 1e-9 per draw.
        assert chosen == {"big"}
    assert privacy.select_groups({}, 1, budget, 1e-9) == set()


@pytest.mark.parametrize(("l1", "budget"), [(6, Fraction(1, 3)), (9000, Fraction(1, 7)),
                                            (1, Fraction(1, 1_000_000))])
def test_each_measurement_stays_within_its_share(l1: int, budget: Fraction) -> None:
    measurement, scale = privacy._calibrated(
        lambda s: privacy.dp.m.make_laplace(*privacy._int_space(), scale=s), l1, float(l1),
        budget)
    assert Fraction(measurement.map(l1)) <= budget
    assert scale == pytest.approx(l1 / float(budget), rel=1e-9)


def test_an_averages_interval_covers_it_as_often_as_stated() -> None:
    # 100 values averaging 65 within [0, 120], 6 rows per customer, epsilon 1 per part.
    # Both parts at 97.5 % make the ratio's interval hold with >= 95 %: more than 160 misses
    # in 2000 draws has probability below 1e-8 if that is so.
    misses = 0
    for _ in range(2000):
        [total], sum_scale = privacy.noisy_sums([6500.0], 6 * 120.0, Fraction(1), False)
        [count], count_scale = privacy.noisy_counts([100], 6, Fraction(1))
        avg = privacy.ratio(total, count, privacy.half_width(sum_scale, False, 0.025),
                            privacy.half_width(count_scale, True, 0.025), 0.0, 120.0)
        low, high = avg.interval or (0.0, 0.0)
        misses += not low <= 65 <= high
        assert 0 <= avg.value <= 120
    assert misses <= 160


def test_pooled_integer_noise_is_independent_across_values_and_worker_processes() -> None:
    # The discrete Laplace draws come from OpenDP in batches (privacy._NoisePool); every
    # released value must get its own draw, never one another value or another worker
    # process (forked with a part-used batch) also got.
    import os

    budget = Fraction(1, 10)  # scale 60: two equal runs of 8 draws are all but impossible
    privacy.noisy_counts([0], 6, budget)  # leaves a part-used batch in this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a worker forked with the parent's memory
        try:
            released, _ = privacy.noisy_counts([1000] * 8, 6, budget)
            os.write(write, repr([r.value for r in released]).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode()
    os.close(read)
    mine, _ = privacy.noisy_counts([1000] * 8, 6, budget)
    again, _ = privacy.noisy_counts([1000] * 8, 6, budget)
    assert child != repr([r.value for r in mine])
    assert [r.value for r in mine] != [r.value for r in again]
    spread = [r.value for r in privacy.noisy_counts([1000] * 200, 6, budget)[0]]
    assert len(set(spread)) > 20 and min(spread) < 1000 < max(spread)
