"""Seed groups and paired comparisons across experiments, on hand-made experiment tables."""

import math

import pandas as pd
import pytest

from colbench.comparisons import (comparison_summary, distinct_runs, groups_varying, paired_comparison, seed_summary,
                                  verdict)


def table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df.attrs["params"] = [c for c in df.columns if "." in c]
    return df


EXPERIMENTS = table([
    {"experiment": "main", "train.seed": 42, "train.base_model": "minilm", "train.args.learning_rate": 2e-4},
    {"experiment": "s1", "train.seed": 1, "train.base_model": "minilm", "train.args.learning_rate": 2e-4},
    {"experiment": "s2", "train.seed": 2, "train.base_model": "minilm", "train.args.learning_rate": 2e-4},
    {"experiment": "lr", "train.seed": 42, "train.base_model": "minilm", "train.args.learning_rate": 1e-4},
    {"experiment": "bert", "train.seed": 42, "train.base_model": "tiny-bert", "train.args.learning_rate": 2e-4},
])


def test_experiments_that_differ_only_in_seed_form_a_group():
    [group] = groups_varying(EXPERIMENTS, "train.seed")
    assert group["experiment"].tolist() == ["main", "s1", "s2"]  # not "lr" (another learning rate) nor "bert"
    [encoders] = groups_varying(EXPERIMENTS, "train.base_model")
    assert encoders["experiment"].tolist() == ["main", "bert"]


def test_seed_summary_hand_worked():
    # Every query of a run has the same value: the bootstrap intervals collapse onto the values.
    per_query = {name: {"d": {f"q{i}": v for i in range(5)}} for name, v in (("main", 0.50), ("s1", 0.54), ("s2", 0.58))}
    [group] = groups_varying(EXPERIMENTS, "train.seed")
    summary, seeds = seed_summary(group, per_query, {"d": 56.0}, samples=100)
    row = summary.iloc[0]
    assert (row["seeds"], row["mean"], row["min"], row["max"]) == (3, pytest.approx(54.0), pytest.approx(50.0),
                                                                   pytest.approx(58.0))
    assert row["std"] == pytest.approx(4.0)  # sample standard deviation of 50, 54, 58
    assert row["verdict"] == "inside the seed range"
    assert seeds.set_index("experiment").loc["s1", ["ci_low", "ci_high"]].tolist() == pytest.approx([54.0, 54.0])


def test_the_verdict_uses_the_seed_range_and_the_bootstrap_intervals():
    assert verdict(None, [50, 52], [45, 47], [55, 57]) == "no reference value"
    assert verdict(51.0, [50, 52], [45, 47], [55, 57]) == "inside the seed range"
    assert verdict(54.5, [50, 52], [45, 47], [55, 57]) == (
        "outside the seed range by 2.50 points, inside a seed's bootstrap interval")
    assert verdict(40.0, [50, 52], [45, 47], [55, 57]) == (
        "outside the seed range by 10.00 points and beyond every seed's bootstrap interval")


def test_paired_comparison_counts_wins_and_bootstraps_the_difference():
    per_query = {"main": {"d": {"q1": 1.0, "q2": 0.5, "q3": 0.0, "q4": 0.5}},
                 "bert": {"d": {"q1": 0.0, "q2": 0.5, "q3": 0.0, "q4": 0.0}}}
    [group] = groups_varying(EXPERIMENTS, "train.base_model")
    result = paired_comparison(group, per_query, key="train.base_model", reference_row="main", samples=200)
    bert = result.set_index("experiment").loc["bert"]
    assert bert["difference"] == pytest.approx(-37.5)  # mean of (-1, 0, 0, -0.5) x100
    assert (bert["wins"], bert["losses"], bert["ties"]) == (0, 2, 2)
    assert bert["ci_low"] <= -37.5 <= bert["ci_high"] <= 0
    main = result.set_index("experiment").loc["main"]
    assert main["difference"] == 0 and math.isnan(main["ci_low"])


def test_the_encoder_verdict_is_decided_by_the_paired_interval():
    rows = pd.DataFrame([  # the baseline row (no interval) is the reference, not a verdict
        {"dataset": "d", "train.base_model": "main", "ndcg@10": 60.0, "difference": 0.0, "ci_low": math.nan,
         "ci_high": math.nan, "wins": 0, "losses": 0, "ties": 4},
        *({"dataset": "d", "train.base_model": name, "ndcg@10": 60.0 + diff, "difference": diff, "ci_low": low,
           "ci_high": high, "wins": 1, "losses": 2, "ties": 1}
          for name, diff, low, high in (("worse", -3.0, -5.0, -1.0), ("unclear", 1.0, -0.5, 2.5), ("better", 2.0, 0.5, 3.5))),
    ])
    lines = comparison_summary(rows, "train.base_model").splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["worse.", "no difference the queries can tell.", "better."]
    assert lines[0].startswith("- d: train.base_model = worse: ndcg@10 57.00, -3.00 points (95% CI -5.00 to -1.00;")


def test_the_workspace_stands_for_the_baseline_it_reproduces():
    rows = table([
        {"experiment": "workspace", "role": "workspace", "train.seed": 42, "train.base_model": "minilm"},
        {"experiment": "main", "role": "baseline", "train.seed": 42, "train.base_model": "minilm"},
        {"experiment": "s1", "role": "experiment", "train.seed": 1, "train.base_model": "minilm"},
    ])
    rows.attrs["per_query"] = {"workspace": {"d": {"q": 0.5}}, "s1": {"d": {"q": 0.6}}}  # main's outputs are elsewhere
    assert distinct_runs(rows)["experiment"].tolist() == ["workspace", "s1"]
    rows.attrs["per_query"]["main"] = {"d": {"q": 0.5}}
    assert distinct_runs(rows)["experiment"].tolist() == ["main", "s1"]
