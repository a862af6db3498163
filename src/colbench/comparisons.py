"""Results across DVC experiments: the run-to-run spread of one recipe over training seeds, and paired
comparisons of recipes that differ in one setting (e.g. the base encoder).

Both read the experiments table (`colbench.experiments.experiments_table` with ``all_params=True``) and the
per-query metric of each experiment (the snapshot keeps them, see `colbench.experiments.save_experiments`),
one row per configuration (`distinct_runs`):

- A *seed group* is a set of experiments whose params are equal except ``train.seed`` (the seed of data order
  and the projection's initialisation): no labelling by hand. `seed_summary` gives, per dataset, the mean,
  standard deviation and range across seeds next to each seed's bootstrap interval over queries and the
  published value, with a verdict that uses both spreads.
- A *comparison group* is a set of experiments whose params are equal except one key (``train.base_model``
  for encoders). `paired_comparison` compares each member with a reference member query by query: the mean
  difference with its paired-bootstrap interval, and on how many queries each side wins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from colbench.evaluate import paired_bootstrap

SEED_KEY = "train.seed"
ENCODER_KEY = "train.base_model"


def _signatures(table: pd.DataFrame, params: Sequence[str]) -> pd.Series:
    """One text per row naming its values of ``params``: rows with equal signatures are the same configuration."""
    return table.apply(lambda row: json.dumps({p: row[p] for p in params}, sort_keys=True, default=str), axis=1)


def distinct_runs(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``table`` that have per-query values, one per configuration: the committed baseline and the
    workspace are the same configuration when the workspace reproduces it (the baseline's outputs may exist only
    on the machine that committed them, the workspace's are here); the baseline is kept when both have values."""
    if table.empty:
        return table
    order = {"baseline": 0, "experiment": 1, "workspace": 2}
    kept = table[table["experiment"].isin(table.attrs.get("per_query", {}))]
    kept = kept.assign(_order=kept["role"].map(order), _signature=_signatures(kept, table.attrs.get("params", [])))
    kept = kept.sort_values("_order", kind="stable").drop_duplicates("_signature").sort_index()
    result = kept.drop(columns=["_order", "_signature"])
    result.attrs = dict(table.attrs)
    return result


def groups_varying(table: pd.DataFrame, key: str) -> list[pd.DataFrame]:
    """Groups of at least two rows of ``table`` whose params are equal except ``key``, which takes at least two
    values in the group; rows in table order. ``table.attrs["params"]`` names the param columns (all of them)."""
    if key not in table.columns or table.empty:
        return []
    keyed = table.assign(_signature=_signatures(table, [p for p in table.attrs.get("params", []) if p != key]))
    groups = []
    for _, group in keyed.groupby("_signature", sort=False):
        if len(group) >= 2 and group[key].nunique() >= 2:
            groups.append(group.drop(columns="_signature"))
    return groups


def seed_summary(group: pd.DataFrame, per_query: Mapping[str, Mapping[str, Mapping[str, float]]],
                 reference: Mapping[str, float], *, metric: str = "ndcg@10", samples: int = 1000,
                 confidence: float = 0.95, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The spread of one recipe over training seeds, x100.

    ``per_query[experiment][dataset]`` is ``{query_id: value}`` of ``metric``. Returns ``(summary, seeds)``:
    ``summary`` has one row per dataset — ``seeds`` (how many), ``mean``, ``std`` (sample standard deviation),
    ``min``, ``max``, ``reference`` (``report.reference_ndcg10``) and ``verdict``; ``seeds`` one row per experiment and dataset — ``seed``,
    the value and its bootstrap interval over queries (``ci_low``, ``ci_high``).
    """
    rows = []
    for _, row in group.iterrows():
        for dataset, values in per_query.get(row["experiment"], {}).items():
            ci = paired_bootstrap({q: {metric: v} for q, v in values.items()}, metric=metric, samples=samples,
                                  confidence=confidence, seed=seed)
            rows.append({"dataset": dataset, "experiment": row["experiment"], "seed": row[SEED_KEY],
                         metric: 100 * ci["mean"], "ci_low": 100 * ci["low"], "ci_high": 100 * ci["high"]})
    seeds = pd.DataFrame(rows, columns=["dataset", "experiment", "seed", metric, "ci_low", "ci_high"])
    summary = []
    for dataset, runs in seeds.groupby("dataset", sort=False):
        values = runs[metric].to_numpy(float)
        expected = reference.get(dataset)
        summary.append({"dataset": dataset, "seeds": len(values), "mean": values.mean(),
                        "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                        "min": values.min(), "max": values.max(),
                        "reference": math.nan if expected is None else float(expected),
                        "verdict": verdict(expected, values, runs["ci_low"].to_numpy(float),
                                           runs["ci_high"].to_numpy(float))})
    columns = ["dataset", "seeds", "mean", "std", "min", "max", "reference", "verdict"]
    return pd.DataFrame(summary, columns=columns), seeds


def verdict(expected: float | None, values: Sequence[float], ci_low: Sequence[float],
            ci_high: Sequence[float]) -> str:
    """Where the reference value lies against the seeds' values and their bootstrap intervals (all x100)."""
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return "no reference value"
    low, high = min(values), max(values)
    if low <= expected <= high:
        return "inside the seed range"
    gap = low - expected if expected < low else expected - high
    if min(ci_low) <= expected <= max(ci_high):
        return f"outside the seed range by {gap:.2f} points, inside a seed's bootstrap interval"
    return f"outside the seed range by {gap:.2f} points and beyond every seed's bootstrap interval"


def paired_comparison(group: pd.DataFrame, per_query: Mapping[str, Mapping[str, Mapping[str, float]]], *,
                      key: str, reference_row: str, metric: str = "ndcg@10", samples: int = 1000,
                      confidence: float = 0.95, seed: int = 42) -> pd.DataFrame:
    """Each member of ``group`` against ``reference_row`` (an experiment name in it), per dataset, x100.

    Columns: ``dataset``, ``key`` (the member's value of the varied setting), ``experiment``, ``metric`` (its mean),
    ``difference`` (member - reference, over the queries both have), ``ci_low`` / ``ci_high`` (paired bootstrap of
    the difference), ``wins`` / ``losses`` / ``ties`` (queries where the member scores higher / lower / the same).
    The reference's own row has difference 0 and no interval.
    """
    reference = per_query.get(reference_row, {})
    rows = []
    for _, row in group.iterrows():
        for dataset, values in per_query.get(row["experiment"], {}).items():
            base = reference.get(dataset, {})
            common = sorted(set(values) & set(base))
            a = {q: {metric: values[q]} for q in common}
            b = {q: {metric: base[q]} for q in common}
            diff = np.array([values[q] - base[q] for q in common])
            result: dict[str, Any] = {"dataset": dataset, key: row[key], "experiment": row["experiment"],
                                      metric: 100 * float(np.mean([values[q] for q in values])),
                                      "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()),
                                      "ties": int((diff == 0).sum())}
            if row["experiment"] == reference_row or not common:
                result.update(difference=0.0 if common else math.nan, ci_low=math.nan, ci_high=math.nan)
            else:
                ci = paired_bootstrap(a, b, metric=metric, samples=samples, confidence=confidence, seed=seed)
                result.update(difference=100 * ci["mean"], ci_low=100 * ci["low"], ci_high=100 * ci["high"])
            rows.append(result)
    columns = ["dataset", key, "experiment", metric, "difference", "ci_low", "ci_high", "wins", "losses", "ties"]
    return pd.DataFrame(rows, columns=columns)


def comparison_summary(table: pd.DataFrame, key: str, metric: str = "ndcg@10", confidence: float = 0.95) -> str:
    """One Markdown line per compared member: the difference with its interval, and whether it excludes 0."""
    lines = []
    for row in table.to_dict("records"):
        if math.isnan(row["ci_low"]):
            continue
        certain = ("better" if row["ci_low"] > 0 else "worse" if row["ci_high"] < 0 else
                   "no difference the queries can tell")
        lines.append(f"- {row['dataset']}: {key} = {row[key]}: {metric} {row[metric]:.2f}, {row['difference']:+.2f} "
                     f"points ({confidence:.0%} CI {row['ci_low']:+.2f} to {row['ci_high']:+.2f}; wins {row['wins']}, losses "
                     f"{row['losses']}, ties {row['ties']} queries): {certain}.")
    return "\n".join(lines)


def seed_study(experiments: pd.DataFrame, reference: Mapping[str, float], figure: str | Path, *,
               samples: int, confidence: float, seed: int,
               reference_label: str = "reference") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every seed group among ``experiments`` (a table with all params, see `colbench.comparisons`): the summary
    per group and dataset, each seed's value and interval, and ``figure`` for the largest group (a placeholder
    saying how to make one when there is none)."""
    from colbench import figures  # drawing is the report's; imported here only when a section is drawn

    summaries, runs = [], []
    groups = sorted(groups_varying(distinct_runs(experiments), SEED_KEY), key=len, reverse=True)
    for number, group in enumerate(groups, start=1):
        summary, seeds = seed_summary(group, experiments.attrs.get("per_query", {}), reference, samples=samples,
                                      confidence=confidence, seed=seed)
        summaries.append(summary.assign(group=number))
        runs.append(seeds.assign(group=number))
    if not groups or summaries[0].empty:
        figures.placeholder(figure, "No seed group yet: run `make seeds`\n(the same configuration under several "
                                    "train.seed values)")
        return pd.DataFrame(), pd.DataFrame()
    figures.plot_seeds(runs[0], summaries[0], figure, confidence=confidence, reference_label=reference_label)
    return pd.concat(summaries, ignore_index=True), pd.concat(runs, ignore_index=True)


def encoder_comparison(experiments: pd.DataFrame, figure: str | Path, *, samples: int, confidence: float,
                       seed: int) -> pd.DataFrame:
    """Every group of experiments differing only in ``train.base_model``, each member against the group's
    baseline (the committed configuration or the workspace reproducing it, else its first member), per
    dataset; ``figure`` shows them all."""
    from colbench import figures  # drawing is the report's; imported here only when a section is drawn

    tables = []
    for group in groups_varying(distinct_runs(experiments), ENCODER_KEY):
        baseline = group[group["role"].isin(["baseline", "workspace"])]
        reference = (baseline if len(baseline) else group).iloc[0]["experiment"]
        tables.append(paired_comparison(group, experiments.attrs.get("per_query", {}), key=ENCODER_KEY,
                                        reference_row=reference, samples=samples, confidence=confidence, seed=seed))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    if table.empty or table["ci_low"].isna().all():
        figures.placeholder(figure, "No encoder comparison yet: run `make encoders`\n(the same recipe on other "
                                    "train.base_model values)")
    else:
        figures.plot_comparison(table, figure, key=ENCODER_KEY, confidence=confidence)
    return table
