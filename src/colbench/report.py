"""Tables, figures and the index page of the report notebook. Every file is written atomically.

Tables are pandas DataFrames; figures are matplotlib PNGs with labelled axes and units, the study's
values marked. Nothing here reads params.yaml: the notebook passes the values in.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; a notebook's inline display is not needed to save PNGs

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from colbench.atomic import atomic_file, read_json, write_text  # noqa: E402
from colbench.errors import InputError  # noqa: E402
from colbench.evaluate import paired_bootstrap  # noqa: E402

STAGE_ORDER = ("prepare", "train", "encode", "index", "retrieve", "evaluate", "report")
_COST_KEYS = ("stage", "unit", "items", "wall_s")


# ----------------------------------------------------------------------------------------- tables


def study_table(
    metrics: Mapping[str, Mapping[str, float]],
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]],
    reference: Mapping[str, float],
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 42,
    metric: str = "ndcg@10",
) -> pd.DataFrame:
    """One row per dataset of ``metrics``: this run's ``metric`` x100 against the published value.

    Columns: ``dataset``, ``queries``, ``ndcg@10`` (this run, x100), ``ci_low`` / ``ci_high`` (the
    ``confidence`` percentile-bootstrap interval over this run's queries, x100), ``published`` (x100,
    NaN where ``reference`` has no value), ``difference`` (run - published) and ``reproduced``: True
    only where the published value lies inside the interval; <NA> where there is nothing to compare.
    """
    rows = []
    for dataset in metrics:
        if dataset not in per_query:
            raise InputError(f"no per-query metrics for dataset {dataset!r}: run the evaluate stage for it")
        if metric not in metrics[dataset]:
            raise InputError(f"metrics of dataset {dataset!r} have no {metric!r}")
        ci = paired_bootstrap(per_query[dataset], metric=metric, samples=samples, confidence=confidence, seed=seed)
        value = 100 * float(metrics[dataset][metric])
        published = reference.get(dataset)
        published = float("nan") if published is None else float(published)
        low, high = 100 * ci["low"], 100 * ci["high"]
        rows.append(
            {
                "dataset": dataset,
                "queries": ci["queries"],
                metric: value,
                "ci_low": low,
                "ci_high": high,
                "published": published,
                "difference": value - published,
                "reproduced": pd.NA if math.isnan(published) else bool(low <= published <= high),
            }
        )
    table = pd.DataFrame(rows, columns=["dataset", "queries", metric, "ci_low", "ci_high", "published",
                                        "difference", "reproduced"])
    table["reproduced"] = table["reproduced"].astype("boolean")
    return table


def costs_table(costs_dir: str | Path) -> pd.DataFrame:
    """Read every ``*.json`` record of :func:`colbench.costs.measure` under ``costs_dir``.

    One row per file: ``stage``, ``dataset``, ``unit``, ``items``, ``wall_s``, ``items_per_s``,
    ``peak_rss_mb`` (NaN when absent). ``dataset`` is the record's ``dataset`` key if it has one, else
    the file name's part after the stage name (``encode-scifact.json``, ``encode/scifact.json``), else
    empty. Rows follow the pipeline's stage order, then dataset.
    """
    costs_dir = Path(costs_dir)
    if not costs_dir.is_dir():
        raise InputError(f"costs folder {costs_dir} does not exist: run the pipeline's stages first")
    rows = []
    for path in sorted(costs_dir.rglob("*.json")):
        record = read_json(path)
        missing = [key for key in _COST_KEYS if not isinstance(record, dict) or key not in record]
        if missing:
            raise InputError(f"cost record {path} lacks {missing}: it must come from colbench.costs.measure")
        wall = float(record["wall_s"])
        rate = record.get("items_per_s")
        rows.append(
            {
                "stage": str(record["stage"]),
                "dataset": str(record.get("dataset") or _dataset_from_name(path, str(record["stage"]))),
                "unit": str(record["unit"]),
                "items": record["items"],
                "wall_s": wall,
                "items_per_s": float(rate) if rate is not None else (record["items"] / wall if wall > 0 else np.nan),
                "peak_rss_mb": np.nan if record.get("peak_rss_mb") is None else float(record["peak_rss_mb"]),
            }
        )
    table = pd.DataFrame(rows, columns=["stage", "dataset", "unit", "items", "wall_s", "items_per_s", "peak_rss_mb"])
    order = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    table["_order"] = table["stage"].map(lambda s: order.get(s, len(order)))
    table = table.sort_values(["_order", "stage", "dataset"], kind="stable")
    return table.drop(columns="_order").reset_index(drop=True)


def per_query_view(
    per_query_a: Mapping[str, Mapping[str, float]],
    per_query_b: Mapping[str, Mapping[str, float]],
    queries: Mapping[str, str],
    corpus: Mapping[str, Any],
    run_a: Mapping[str, Mapping[str, float]],
    run_b: Mapping[str, Mapping[str, float]],
    *,
    metric: str = "ndcg@10",
    n: int = 5,
) -> pd.DataFrame:
    """The ``n`` queries where run a gains most over baseline b, and the ``n`` where it loses most.

    Columns: ``change`` (gain / loss), ``query_id``, ``query``, ``a``, ``b``, ``delta`` (a - b) and
    ``top3_a`` / ``top3_b``: the three best documents of each run as ``title [id]`` (the text's start
    where a document has no title). Only queries in both per-query dicts count; queries with delta 0
    are left out. Ties are ordered by query id.
    """
    common = sorted(set(per_query_a) & set(per_query_b))
    deltas = [(float(per_query_a[q][metric]) - float(per_query_b[q][metric]), q) for q in common]
    gains = sorted((d for d in deltas if d[0] > 0), key=lambda d: (-d[0], d[1]))[:n]
    losses = sorted((d for d in deltas if d[0] < 0), key=lambda d: (d[0], d[1]))[:n]
    rows = []
    for change, picked in (("gain", gains), ("loss", losses)):
        for delta, qid in picked:
            rows.append(
                {
                    "change": change,
                    "query_id": qid,
                    "query": queries.get(qid, ""),
                    "a": float(per_query_a[qid][metric]),
                    "b": float(per_query_b[qid][metric]),
                    "delta": delta,
                    "top3_a": "; ".join(_doc_label(corpus, d) for d in _top(run_a.get(qid, {}), 3)),
                    "top3_b": "; ".join(_doc_label(corpus, d) for d in _top(run_b.get(qid, {}), 3)),
                }
            )
    return pd.DataFrame(rows, columns=["change", "query_id", "query", "a", "b", "delta", "top3_a", "top3_b"])


def write_markdown_table(df: pd.DataFrame, path: str | Path, *, floatfmt: str = ".2f") -> Path:
    """Write ``df`` as a GitHub-flavoured Markdown table (floats as ``floatfmt``, NaN/<NA> as "–")."""
    write_text(path, markdown_table(df, floatfmt=floatfmt))
    return Path(path)


def markdown_table(df: pd.DataFrame, *, floatfmt: str = ".2f") -> str:
    """``df`` as Markdown text. Written here because pandas' to_markdown needs tabulate, not a dependency."""

    def cell(value: Any) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else "no"
        if isinstance(value, (float, np.floating)):
            return format(float(value), floatfmt)
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False, name=None)]
    return "\n".join([header, rule, *body]) + "\n"


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV (no index), atomically."""
    with atomic_file(path, "w", encoding="utf-8", newline="") as handle:
        df.to_csv(handle, index=False)
    return Path(path)


# ---------------------------------------------------------------------------------------- figures


def plot_study(table: pd.DataFrame, path: str | Path, *, metric: str = "ndcg@10",
               reference_label: str = "published") -> Path:
    """Bar chart per dataset: this run's ``metric`` (x100) with its CI, next to the published value."""
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(table) + 2), 4.5))
    ours = table[metric].to_numpy(float)
    err = np.vstack([ours - table["ci_low"].to_numpy(float), table["ci_high"].to_numpy(float) - ours])
    bars = ax.bar(x - 0.2, ours, 0.4, yerr=err, capsize=4, label="this run (95 % CI)", color="tab:blue")
    published = table["published"].to_numpy(float)
    ref = ax.bar(x + 0.2, np.nan_to_num(published), 0.4, label=reference_label, color="tab:gray")
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in ours], padding=2, fontsize=8, label_type="center", color="white")
    ax.bar_label(ref, labels=["" if math.isnan(v) else f"{v:.1f}" for v in published], padding=2, fontsize=8,
                 label_type="center", color="white")
    labels = []
    for name, ok in zip(table["dataset"], table["reproduced"], strict=True):
        verdict = "no reference" if ok is pd.NA else ("reproduced" if ok else "not reproduced")
        labels.append(f"{name}\n({verdict})")
    ax.set_xticks(x, labels)
    ax.set_ylabel(f"{metric.upper()} (x100)")
    ax.set_xlabel("BEIR dataset (test split)")
    ax.set_title(f"{metric.upper()}: this run vs the {reference_label} value")
    ax.set_ylim(0, max(100.0, np.nanmax(np.concatenate([table["ci_high"].to_numpy(float), published]))) * 1.05
                if len(table) else 100)
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_costs(costs: pd.DataFrame, path: str | Path) -> Path:
    """Two panels per stage (and dataset): wall time in seconds, and peak resident memory in MiB."""
    labels = [f"{s}" + (f" / {d}" if d else "") for s, d in zip(costs["stage"], costs["dataset"], strict=True)]
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
    return _save(fig, path)


def plot_training(log: Sequence[Mapping[str, Any]], path: str | Path, *, checkpoint: str | None = None) -> Path:
    """Training loss per step (raw and smoothed) with the learning rate on a second axis; a lower panel
    with the held-out ``eval_*`` metrics (x100) per step when the log has any.

    ``log`` is the trainer's log history: dicts with ``step`` and some of ``loss``, ``learning_rate``
    and ``eval_...`` keys. With ``checkpoint`` (an existing checkpoint evaluated, nothing trained) and
    an empty log, the figure says so.
    """
    train = [e for e in log if "loss" in e and "step" in e]
    if not train and checkpoint and not log:
        fig, ax = plt.subplots(figsize=(8, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, f"No training in this run: it evaluates the existing checkpoint\n{checkpoint}",
                ha="center", va="center", fontsize=11)
        return _save(fig, path)
    if not train:
        raise InputError("training log has no entries with 'step' and 'loss': was training run with logging?")
    evals = sorted({k for e in log for k in e if k.startswith("eval_") and _is_score_key(k)})
    steps = np.array([e["step"] for e in train], float)
    loss = np.array([e["loss"] for e in train], float)
    rows = 2 if evals else 1
    fig, axes = plt.subplots(rows, 1, figsize=(8, 3.6 * rows), sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=1, label="loss")
    window = max(1, len(loss) // 10)
    smooth = pd.Series(loss).rolling(window, min_periods=1).mean()
    ax.plot(steps, smooth, color="tab:blue", lw=2, label=f"loss, mean of {window} logs")
    ax.set_ylabel("training loss (KL divergence)")
    ax.set_title("Training")
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    lr = [(e["step"], e["learning_rate"]) for e in train if "learning_rate" in e]
    if lr:
        twin = ax.twinx()
        twin.plot(*zip(*lr, strict=True), color="tab:red", lw=1.2, ls="--", label="learning rate")
        twin.set_ylabel("learning rate", color="tab:red")
        twin.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        more, more_names = twin.get_legend_handles_labels()
        handles, names = handles + more, names + more_names
    ax.legend(handles, names, loc="upper right", fontsize=8)
    if evals:
        ev = axes[1, 0]
        for key in evals:
            points = [(e["step"], 100 * float(e[key])) for e in log if key in e and "step" in e]
            ev.plot(*zip(*points, strict=True), marker="o", label=key.removeprefix("eval_"))
            ev.annotate(f"{points[-1][1]:.1f}", points[-1], textcoords="offset points", xytext=(4, 4), fontsize=8)
        ev.margins(x=0.08, y=0.15)
        ev.set_ylabel("held-out metric (x100)")
        ev.legend(fontsize=8)
        ev.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimizer step")
    return _save(fig, path)


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
    return _save(fig, path)


# ------------------------------------------------------------------------------- html and index


def export_html(notebook_paths: Iterable[str | Path], out_dir: str | Path) -> list[Path]:
    """Export executed notebooks to ``out_dir/<name>.html`` with nbconvert's default (lab) template.

    The template embeds its CSS and the figures (``embed_images``), so the pages read offline; only
    MathJax (LaTeX), require.js (widgets) and mermaid come from a CDN when online.
    """
    from nbconvert import HTMLExporter  # import here: it is slow and only the report needs it

    exporter = HTMLExporter(embed_images=True)
    written = []
    for nb_path in notebook_paths:
        nb_path = Path(nb_path)
        if not nb_path.is_file():
            raise InputError(f"notebook {nb_path} does not exist: run its stage first")
        body, _ = exporter.from_filename(str(nb_path))
        target = Path(out_dir) / f"{nb_path.stem}.html"
        write_text(target, body)
        written.append(target)
    return written


def write_index(reports_dir: str | Path, headline: pd.DataFrame, html_files: Iterable[str | Path],
                ablations: pd.DataFrame | None = None) -> Path:
    """Write ``reports_dir/README.md``: the headline table, the ablations (a table from
    :func:`colbench.experiments.table_from_file`, when it has rows), links to the HTML notebooks, the
    figures (every PNG under ``reports_dir``) and the tables (CSV / Markdown), all as relative links."""
    reports_dir = Path(reports_dir)
    index = reports_dir / "README.md"

    def rel(p: Path) -> str:
        return Path(os.path.relpath(Path(p).resolve(), reports_dir.resolve())).as_posix()

    lines = ["# Report", "", "## Headline", "", markdown_table(headline).rstrip(), ""]
    if ablations is not None and len(ablations):
        metrics = ablations.attrs.get("metrics", [])
        params = ablations.attrs.get("params", [])
        shown = ablations[["experiment", "role"]].copy()
        for param in params:  # as written in params.yaml (a learning rate is not a 2-decimal number)
            shown[param] = ablations[param].map(str)
        for metric in metrics:
            shown[metric] = 100 * ablations[metric]
        lines += ["## Ablations", "", "DVC experiments (metrics x100); the baseline is this pipeline's committed "
                  "configuration.", "", markdown_table(shown).rstrip(), ""]
    html = [Path(p) for p in html_files]
    if html:
        lines += ["## Executed notebooks", ""] + [f"- [{p.stem}]({rel(p)})" for p in html] + [""]
    figures = sorted(p for p in reports_dir.rglob("*.png"))
    if figures:
        lines += ["## Figures", ""]
        for fig in figures:
            lines += [f"### {fig.stem}", "", f"![{fig.stem}]({rel(fig)})", ""]
    tables = sorted(p for p in reports_dir.rglob("*") if p.suffix in {".csv", ".md"} and p != index)
    if tables:
        lines += ["## Tables", ""] + [f"- [{rel(p)}]({rel(p)})" for p in tables] + [""]
    write_text(index, "\n".join(lines))
    return index


# ---------------------------------------------------------------------------------------- helpers


def _save(fig: plt.Figure, path: str | Path) -> Path:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    with atomic_file(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return Path(path)


def _num(value: float) -> str:
    # Costs span orders of magnitude (0.25 steps/s to 13,000 vectors/s): keep about 3 significant digits.
    value = float(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"


def _dataset_from_name(path: Path, stage: str) -> str:
    if path.parent.name == stage:
        return path.stem
    stem = path.stem
    if stem.startswith(stage) and len(stem) > len(stage):
        return stem[len(stage):].lstrip("-_@.")
    return ""


def _is_score_key(key: str) -> bool:
    # eval_* also holds loss, runtime and throughput: plot only retrieval scores.
    return any(m in key for m in ("ndcg", "mrr", "map", "recall", "accuracy", "precision"))


def _top(hits: Mapping[str, float], n: int) -> list[str]:
    return [doc for _, doc in sorted((-float(s), d) for d, s in hits.items())[:n]]


def _doc_label(corpus: Mapping[str, Any], doc: str) -> str:
    entry = corpus.get(doc)
    if isinstance(entry, Mapping):
        title = (entry.get("title") or "").strip() or (entry.get("text") or "").strip()
    else:
        title = str(entry or "").strip()
    title = title if len(title) <= 60 else title[:57] + "..."
    return f"{title} [{doc}]" if title else f"[{doc}]"


# ------------------------------------------------------------------------------- report notebook


def reproduction_summary(table: pd.DataFrame, reference_label: str = "study", metric: str = "ndcg@10") -> str:
    """One Markdown line per dataset: "reproduced" only where the published value lies inside the interval."""
    lines = []
    for row in table.itertuples(index=False):
        value, low, high = getattr(row, metric.replace("@", "_"), None), row.ci_low, row.ci_high
        value = row[2] if value is None else value
        if pd.isna(row.reproduced):
            verdict = f"no {reference_label} value to compare with"
        elif row.reproduced:
            verdict = f"**reproduced**: the {reference_label} value {row.published:.2f} lies inside the interval"
        else:
            verdict = (f"**not reproduced**: the {reference_label} value {row.published:.2f} lies outside the interval "
                       f"({row.difference:+.2f} points)")
        lines.append(f"- {row.dataset}: {metric} {value:.2f} (95 % CI {low:.2f}-{high:.2f}, {row.queries} queries); {verdict}.")
    return "\n".join(lines)


def training_gain(train_metrics: Mapping[str, Any], metrics: Mapping[str, Mapping[str, float]],
                  metric: str = "ndcg@10") -> pd.DataFrame:
    """The held-out set's ``metric`` (x100) for the untrained model (step 0) against this run's evaluation."""
    heldout = train_metrics.get("heldout_dataset")
    start = train_metrics.get(f"heldout_start_{metric}")
    if not heldout or start is None:
        return pd.DataFrame(columns=["dataset", f"untrained {metric}", f"trained {metric}", "gain"])
    trained = metrics.get(heldout, {}).get(metric, train_metrics.get(f"heldout_end_{metric}"))
    return pd.DataFrame([{"dataset": heldout, f"untrained {metric}": 100 * start,
                          f"trained {metric}": None if trained is None else 100 * trained,
                          "gain": None if trained is None else 100 * (trained - start)}])


def per_query_against_baseline(params, dataset: str, metric: str = "ndcg@10") -> pd.DataFrame | None:
    """Queries of ``dataset`` where this run gains and loses most against the baseline run.

    The baseline is the run file ``<params.report.baseline>/<dataset>.trec`` when that param is set,
    else the untrained model's run saved by the training stage; None when neither exists.
    """
    from colbench.atomic import read_json
    from colbench.evaluate import evaluate_run, load_qrels
    from colbench.prepare import load_beir_folder
    from colbench.retrieve import read_trec

    reports = params.path("reports")
    base_dir = (params.file.parent / params.report.baseline) if params.report.baseline else reports / "train" / "baseline_runs"
    baseline_path = Path(base_dir) / f"{dataset}.trec"
    if not baseline_path.is_file():
        return None
    split = params.prepare.datasets[dataset].split
    qrels = load_qrels(params.path("datasets") / dataset / "qrels" / f"{split}.tsv")
    run_a = read_trec(params.path("runs") / f"{dataset}.trec")
    run_b = read_trec(baseline_path)
    pq_a = read_json(reports / "per_query" / f"{dataset}.json")  # this run's, as the evaluate stage scored it
    _, pq_b = evaluate_run(run_b, qrels, ignore_identical_ids=params.evaluate.ignore_identical_ids[dataset])
    corpus, queries, _, _ = load_beir_folder(params.path("datasets") / dataset, split)
    return per_query_view(pq_a, pq_b, {q["_id"]: q["text"] for q in queries}, {d["_id"]: d for d in corpus},
                          run_a, run_b, metric=metric, n=params.report.per_query_examples)


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m colbench.report [params.yaml]``: export the executed notebooks to HTML and write the index.

    Runs after the report notebook in the report stage's command, so that the report notebook itself
    is exported too.
    """
    import sys

    from colbench.config import load_params
    from colbench.experiments import table_from_file

    argv = list(sys.argv[1:] if argv is None else argv)
    params = load_params(argv[0] if argv else "params.yaml")
    reports = params.path("reports")
    html = export_html(sorted((reports / "notebooks").glob("*.ipynb")), reports / "html")
    headline = pd.read_csv(reports / "study_table.csv")
    index = write_index(reports, headline, html, table_from_file(reports / "experiments.json"))
    print(f"report: {len(html)} notebooks exported to {reports / 'html'}; index {index}")
    return index


if __name__ == "__main__":
    main()


def run_provenance(params) -> dict[str, Any]:
    """What this run came from: seed, code revision, package versions, data and model revisions."""
    from colbench.provenance import provenance

    def manifest(folder: Path) -> dict[str, Any]:
        path = folder / "manifest.json"
        return read_json(path) if path.is_file() else {}

    kd = manifest(params.path("kd"))
    model_dir = params.path("model")
    model = read_json(model_dir / "colbench_train.json") if (model_dir / "colbench_train.json").is_file() else {}
    pointer = read_json(model_dir / "checkpoint.json") if (model_dir / "checkpoint.json").is_file() else {}
    record = provenance(params.file.parent.resolve())
    return {
        "seed": params.base.seed,
        "git": record.get("git"),
        "packages": record.get("packages"),
        "hardware": record.get("hardware"),
        "distillation_data": {"source": kd.get("source"), "revision": kd.get("revision"), "n_train": kd.get("n_train")},
        "evaluation_data": {name: {k: manifest(params.path("datasets") / name).get(k) for k in ("source", "split", "url")}
                            for name in params.datasets},
        "model": pointer.get("checkpoint") or {"base_model": model.get("base_model"),
                                               "parameter_sha256": model.get("parameter_sha256"),
                                               "global_step": model.get("global_step")},
    }
