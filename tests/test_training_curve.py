"""The reproduction canary: a training loss that leaves the published curve is reported early."""

import warnings

import pytest

from colbench.training_curve import CanaryWarning, LossCanary, reference_curve


def feed(canary: LossCanary, steps, losses) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, loss in zip(steps, losses, strict=True):
            canary.observe(step, loss)
    return [str(w.message) for w in caught if issubclass(w.category, CanaryWarning)]


def test_the_published_curve_ships_with_the_package():
    steps, losses = reference_curve("study")
    assert (steps[0], steps[-1], len(steps)) == (100, 50500, 505)  # every 100 steps of the 50,546-step epoch
    assert losses[0] == pytest.approx(0.0524) and losses[-1] == pytest.approx(0.006)


def test_a_run_on_the_published_curve_raises_no_warning():
    steps, losses = reference_curve("study")
    canary = LossCanary()
    assert feed(canary, steps, losses * 1.1) == []  # 10 % above it, inside the 25 % band
    assert canary.events and all(e["inside"] for e in canary.events)


def test_a_diverging_run_is_reported_at_the_first_check_and_again_when_it_returns():
    steps, losses = reference_curve("study")
    diverging = losses.copy()
    diverging[:20] *= 1.8  # a wrong recipe for the first 2,000 steps, then back on the curve
    canary = LossCanary(window=500, from_step=500)
    messages = feed(canary, steps, diverging)
    assert len(messages) == 2, messages
    assert "at step 500" in messages[0] and "1.80x the study curve" in messages[0] and "outside" in messages[0]
    assert "back within 25%" in messages[1]
    outside = [e for e in canary.events if not e["inside"]]
    assert outside[0]["step"] == 500 and outside[0]["ratio"] == pytest.approx(1.8)
