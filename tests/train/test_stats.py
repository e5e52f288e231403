"""Seed statistics of the paired experiment, on fixed numbers."""

import pytest

from instsynth.train.stats import mean_std, paired_interval


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.25]) == (0.25, None)
    with pytest.raises(ValueError):
        mean_std([])


def test_paired_interval_is_the_paired_t_interval():
    base, aug = [0.10, 0.20, 0.30], [0.20, 0.35, 0.40]  # diffs 0.10, 0.15, 0.10
    p = paired_interval(base, aug)
    assert p["diffs"] == pytest.approx([0.10, 0.15, 0.10])
    assert p["mean"] == pytest.approx(0.116667, abs=1e-6) and p["std"] == pytest.approx(0.028868, abs=1e-6)
    # t(0.975, 2) = 4.302653: half width 4.302653 * 0.028868 / sqrt(3) = 0.071711
    assert p["lo"] == pytest.approx(0.044956, abs=1e-5) and p["hi"] == pytest.approx(0.188378, abs=1e-5)
    assert "exceeds seed noise" in p["verdict"]


def test_verdicts_in_words():
    assert "contains 0" in paired_interval([0.1, 0.2, 0.3], [0.12, 0.18, 0.31])["verdict"]
    assert "below 0" in paired_interval([0.3, 0.4, 0.5], [0.1, 0.21, 0.3])["verdict"]
    one = paired_interval([0.1], [0.2])
    assert one["lo"] is None and "one seed" in one["verdict"]
    with pytest.raises(ValueError):
        paired_interval([0.1], [0.2, 0.3])
