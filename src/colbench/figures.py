"""The report's figures: matplotlib PNGs with labelled axes and units, the study's values marked, each written
atomically. Nothing here reads params.yaml or computes a metric: callers pass tables and logs in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; a notebook's inline display is not needed to save PNGs

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from colbench.atomic import write_png  # noqa: E402
from colbench.errors import InputError  # noqa: E402


def plot_study(table: pd.DataFrame, path: str | Path, *, metric: str = "ndcg@10",
               reference_label: str = "reference", confidence: float = 0.95) -> Path:
    """Bar chart per dataset: this run's ``metric`` (x100) with its CI, next to the reference value."""
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(table) + 2), 4.5))
    ours = table[metric].to_numpy(float)
    err = np.vstack([ours - table["ci_low"].to_numpy(float), table["ci_high"].to_numpy(float) - ours])
    bars = ax.bar(x - 0.2, ours, 0.4, yerr=err, capsize=4, label=f"this run ({confidence:.0%} CI)", color="tab:blue")
    expected = table["reference"].to_numpy(float)
    ref = ax.bar(x + 0.2, np.nan_to_num(expected), 0.4, label=reference_label, color="tab:gray")
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in ours], padding=2, fontsize=8, label_type="center", color="white")
    ax.bar_label(ref, labels=["" if math.isnan(v) else f"{v:.1f}" for v in expected], padding=2, fontsize=8,
                 label_type="center", color="white")
    labels = []
    for name, ok in zip(table["dataset"], table["reproduced"], strict=True):
        verdict = "no reference" if ok is pd.NA else ("reproduced" if ok else "not reproduced")
        labels.append(f"{name}\n({verdict})")
    ax.set_xticks(x, labels)
    ax.set_ylabel(f"{metric.upper()} (x100)")
    ax.set_xlabel("BEIR dataset (test split)")
    ax.set_title(f"{metric.upper()}: this run vs the {reference_label} value")
    ax.set_ylim(0, max(100.0, np.nanmax(np.concatenate([table["ci_high"].to_numpy(float), expected]))) * 1.05
                if len(table) else 100)
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return write_png(fig, path)


def plot_costs(costs: pd.DataFrame, path: str | Path) -> Path:
    """Two panels per stage (and dataset): wall time in seconds, and peak resident memory in MiB."""
    datasets = costs["dataset"] if "dataset" in costs else [""] * len(costs)
    labels = [f"{s}" + (f" / {d}" if d else "") for s, d in zip(costs["stage"], datasets, strict=True)]
    y = np.arange(len(costs))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.0 + 0.45 * max(len(costs), 3)), sharey=True)
    bars = left.barh(y, costs["wall_s"], color="tab:blue")
    texts = [
        f"{_num(w)} s" + (f", {_num(r)} {u}/s" if np.isfinite(r) else "")
        for w, r, u in zip(costs["wall_s"], costs["items_per_s"], costs["unit"], strict=True)
    ]
    left.bar_label(bars, labels=texts, padding=3, fontsize=8)
    left.set_xlabel("wall time (s)")
    left.set_title("wall time and throughput")
    left.margins(x=0.35)
    mem = right.barh(y, costs["peak_rss_mb"].fillna(0), color="tab:orange")
    right.bar_label(mem, labels=[f"{m:,.0f}" if np.isfinite(m) else "n/a" for m in costs["peak_rss_mb"]],
                    padding=3, fontsize=8)
    right.set_xlabel("peak resident memory (MiB)")
    right.set_title("peak memory")
    right.margins(x=0.2)
    left.set_yticks(y, labels)
    left.invert_yaxis()  # pipeline order top to bottom
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    return write_png(fig, path)


def plot_tradeoff(
    points: Sequence[Mapping[str, Any]], path: str | Path, *, study_setting: Any = None, setting_name: str = "ef"
) -> Path:
    """Queries per second against NDCG@10 and Recall@100 (x100) across search settings, one panel per dataset.

    ``points`` are ``{setting, qps, ndcg@10, recall@100}`` with an optional ``dataset`` key;
    ``study_setting`` (the configured value, e.g. its ef_search) is circled.
    """
    if not points:
        raise InputError("no trade-off points to plot: run the ef_search sweep first")
    datasets = list(dict.fromkeys(str(p.get("dataset", "")) for p in points))
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        pts = sorted((p for p in points if str(p.get("dataset", "")) == dataset), key=lambda p: float(p["qps"]))
        qps = [float(p["qps"]) for p in pts]
        for key, color in (("ndcg@10", "tab:blue"), ("recall@100", "tab:green")):
            values = [100 * float(p[key]) for p in pts]
            ax.plot(qps, values, marker="o", color=color, label=key.upper())
            for p, q, v in zip(pts, qps, values, strict=True):
                label = "exact" if p["setting"] == "exact" else f"{setting_name}={p['setting']}"
                ax.annotate(label, (q, v), textcoords="offset points", xytext=(4, 5), fontsize=8)
                if study_setting is not None and p["setting"] == study_setting:
                    ax.plot(q, v, marker="o", ms=14, mfc="none", mec="black", mew=1.5)
        if study_setting is not None:
            ax.plot([], [], marker="o", ms=10, mfc="none", mec="black", ls="none",
                    label=f"configured ({setting_name}={study_setting})")
        ax.set_xlabel("throughput (queries/s)")
        ax.set_ylabel("metric (x100)")
        ax.set_title(f"Speed / quality trade-off{': ' + dataset if dataset else ''}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.margins(x=0.15, y=0.1)
    return write_png(fig, path)

def plot_ablation(df: pd.DataFrame, path: str | Path, metric: str = "ndcg@10") -> Path:
    """Grouped bars of ``metric`` (x100) per dataset, one bar per experiment, the baseline outlined.

    The legend names each experiment with its params that differ from the rest (last key part).
    """
    columns = [c for c in df.columns if str(c).startswith(f"{metric}/")]
    if df.empty:
        return placeholder(path, "No DVC experiments yet: run `make ablation`\n(dvc exp run --temp -S <param>=<value>)")
    if not columns:  # e.g. a snapshot of a baseline whose metrics this machine's cache does not hold
        return placeholder(path, f"No experiment in the snapshot has {metric} metrics yet")
    params = df.attrs.get("params", [])
    datasets = [c.split("/", 1)[1] for c in columns]
    x = np.arange(len(columns))
    width = 0.8 / len(df)
    labels = []
    for _, row in df.iterrows():
        settings = ", ".join(f"{p.split('.')[-1]}={_short(row[p])}" for p in params if pd.notna(row[p]))
        labels.append(f"{row['experiment']} ({row['role']})" + (f": {settings}" if settings else ""))
    # Wide enough for the bars and for the longest legend line (about 0.07 inch per character at 8 points).
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(columns) * len(df) + 3, 0.07 * max(map(len, labels)) + 1), 4.8))
    for i, ((_, row), label) in enumerate(zip(df.iterrows(), labels)):
        values = 100 * row[columns].to_numpy(float)
        baseline = row["role"] == "baseline"
        bars = ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=label,
                      edgecolor="black" if baseline else "none", linewidth=1.5 if baseline else 0,
                      hatch="//" if baseline else None)
        ax.bar_label(bars, labels=[f"{v:.1f}" if np.isfinite(v) else "" for v in values], fontsize=7, padding=1)
    ax.set_xticks(x, datasets)
    ax.set_xlabel("dataset")
    ax.set_ylabel(f"{metric.upper()} (x100)")
    ax.set_title(f"Ablations: {metric.upper()} per dataset")
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.15)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1, frameon=False)
    return write_png(fig, path)


def _num(value: float) -> str:
    # Costs span orders of magnitude (0.25 steps/s to 13,000 vectors/s): keep about 3 significant digits.
    value = float(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"


def plot_seeds(seeds: pd.DataFrame, summary: pd.DataFrame, path: str | Path, *, metric: str = "ndcg@10",
               reference_label: str = "reference", confidence: float = 0.95) -> Path:
    """One panel per dataset: each seed's ``metric`` (x100) with its bootstrap interval, the mean and the
    mean +- one standard deviation across seeds as a band, and the reference value as a line."""
    datasets = list(summary["dataset"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets) + 1, 4), squeeze=False)
    for ax, row in zip(axes[0], summary.itertuples(index=False), strict=True):
        runs = seeds[seeds["dataset"] == row.dataset].reset_index(drop=True)
        x = np.arange(len(runs))
        values = runs[metric].to_numpy(float)
        err = np.vstack([values - runs["ci_low"].to_numpy(float), runs["ci_high"].to_numpy(float) - values])
        ax.errorbar(x, values, yerr=err, fmt="o", capsize=4, color="tab:blue", label=f"seed ({confidence:.0%} bootstrap CI)")
        ax.axhspan(row.mean - (row.std if np.isfinite(row.std) else 0), row.mean + (row.std if np.isfinite(row.std) else 0),
                   color="tab:blue", alpha=0.12, label=f"mean {row.mean:.2f} +- {row.std:.2f} (std over seeds)")
        ax.axhline(row.mean, color="tab:blue", lw=1)
        if np.isfinite(row.reference):
            ax.axhline(row.reference, color="tab:gray", ls="--", label=f"{reference_label} {row.reference:.2f}")
        ax.set_xticks(x, [f"seed {s}" for s in runs["seed"]])
        ax.set_ylabel(f"{metric.upper()} (x100)")
        ax.set_title(f"{row.dataset}: {row.verdict}", fontsize=9)
        ax.margins(x=0.2)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("The same recipe under several training seeds")
    return write_png(fig, path)


def plot_comparison(table: pd.DataFrame, path: str | Path, *, key: str, metric: str = "ndcg@10",
                    confidence: float = 0.95) -> Path:
    """Per dataset, each compared member's ``metric`` difference (x100) against the reference, with its paired
    bootstrap interval, and its per-query wins / losses; the reference is the zero line."""
    compared = table[table["ci_low"].notna()].reset_index(drop=True)
    if compared.empty:
        raise InputError(f"nothing to compare: every row of the {key} comparison is its reference")
    labels = [f"{row['dataset']}\n{key.split('.')[-1]} = {_short(row[key])}" for _, row in compared.iterrows()]
    y = np.arange(len(compared))
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.8 * len(compared)))
    diff = compared["difference"].to_numpy(float)
    err = np.vstack([diff - compared["ci_low"].to_numpy(float), compared["ci_high"].to_numpy(float) - diff])
    colors = ["tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray"
              for lo, hi in zip(compared["ci_low"], compared["ci_high"], strict=True)]
    ax.barh(y, diff, xerr=err, capsize=4, color=colors)
    for i, row in compared.iterrows():  # the verdict's numbers, right of the panel
        ax.text(1.02, i, f"{row['difference']:+.1f} [{row['ci_low']:+.1f}, {row['ci_high']:+.1f}]\n"
                f"wins {row['wins']}, losses {row['losses']}, ties {row['ties']}",
                transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric.upper()} difference to the baseline run (x100, {confidence:.0%} paired bootstrap CI)")
    ax.set_title(f"Compared by {key} (green: better, red: worse, grey: undecided)", fontsize=10)
    ax.margins(x=0.1)
    ax.grid(axis="x", alpha=0.3)
    return write_png(fig, path)


def placeholder(path: str | Path, text: str) -> Path:
    """A figure that only says ``text``: a section with nothing to show yet says how to fill it rather than
    leaving a declared output out."""
    fig, ax = plt.subplots(figsize=(7, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11)
    return write_png(fig, path)


def _short(value: object) -> str:
    # A local model path's last four parts say what it is ("fixtures/pylate/modernbert/base": the tests' tiny
    # random encoder, not ModernBERT-base) without the machine's own prefix; hub ids and settings stay whole.
    path = Path(str(value))
    parts = [part for part in path.parts if part not in (".", "..", path.anchor)]
    return "/".join(parts[-4:]) if len(parts) > 4 or str(value).startswith((".", "/")) else str(value)
