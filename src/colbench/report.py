"""The report's tables (pandas DataFrames, Markdown and CSV), its summaries, the executed notebooks as HTML
and the index page (``reports/README.md``). Every file is written atomically; figures are in
`colbench.figures`. Nothing here reads params.yaml but `main`: the notebook passes the values in.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from colbench.atomic import atomic_file, read_json, write_text
from colbench.errors import InputError, exit_with
from colbench.evaluate import paired_bootstrap

STAGE_ORDER = ("prepare", "train", "encode", "index", "retrieve", "evaluate", "report")
_COST_KEYS = ("stage", "unit", "items", "wall_s")


# ----------------------------------------------------------------------------------------- tables


def study_table(
    metrics: Mapping[str, Mapping[str, Any]],
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]],
    reference: Mapping[str, float],
    *,
    other_per_query: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 42,
    metric: str = "ndcg@10",
) -> pd.DataFrame:
    """One row per dataset of ``metrics``: this run's ``metric`` x100 against the reference value.

    Columns: ``dataset``, ``queries``, ``identical_ids`` (the reported protocol: a hit whose id is the
    query's "kept", as the study's PyLate evaluation did, or "dropped", as BEIR does), ``ndcg@10`` (this
    run, x100), ``ci_low`` / ``ci_high`` (the ``confidence`` percentile-bootstrap interval over this run's
    queries, x100), ``reference`` (``report.reference_ndcg10``: the study's published value, or what the demo
    recorded; x100, NaN where there is none), ``difference`` (run - reference) and ``reproduced``: True only where
    the reference lies inside the interval; <NA> where
    there is nothing to compare. With ``other_per_query`` (the evaluate stage's other protocol), the same
    metric and interval under that protocol: ``other_protocol``, ``other_<metric>``, ``other_ci_low``,
    ``other_ci_high``, and ``self_hits``, the hits dropping identical ids removes.
    """
    rows = []
    for dataset in metrics:
        if dataset not in per_query:
            raise InputError(f"no per-query metrics for dataset {dataset!r}: run the evaluate stage for it")
        if metric not in metrics[dataset]:
            raise InputError(f"metrics of dataset {dataset!r} have no {metric!r}")
        ci = paired_bootstrap(per_query[dataset], metric=metric, samples=samples, confidence=confidence, seed=seed)
        value = 100 * float(metrics[dataset][metric])
        expected = reference.get(dataset)
        expected = float("nan") if expected is None else float(expected)
        low, high = 100 * ci["low"], 100 * ci["high"]
        row = {
            "dataset": dataset,
            "queries": ci["queries"],
            "identical_ids": metrics[dataset].get("identical_ids"),
            metric: value,
            "ci_low": low,
            "ci_high": high,
            "reference": expected,
            "difference": value - expected,
            "reproduced": pd.NA if math.isnan(expected) else bool(low <= expected <= high),
        }
        if other_per_query is not None:
            other = paired_bootstrap(other_per_query[dataset], metric=metric, samples=samples, confidence=confidence,
                                     seed=seed)
            row.update({"other_protocol": metrics[dataset]["other_protocol"]["identical_ids"],
                        f"other_{metric}": 100 * other["mean"], "other_ci_low": 100 * other["low"],
                        "other_ci_high": 100 * other["high"], "self_hits": metrics[dataset]["self_hits"]})
        rows.append(row)
    columns = ["dataset", "queries", "identical_ids", metric, "ci_low", "ci_high", "reference", "difference",
               "reproduced"]
    if other_per_query is not None:
        columns += ["other_protocol", f"other_{metric}", "other_ci_low", "other_ci_high", "self_hits"]
    table = pd.DataFrame(rows, columns=columns)
    table["reproduced"] = table["reproduced"].astype("boolean")
    return table


def costs_table(costs_dir: str | Path) -> pd.DataFrame:
    """Read every ``*.json`` record of :func:`colbench.costs.measure` under ``costs_dir``.

    One row per file: ``stage``, ``dataset``, ``unit``, ``items``, ``wall_s``, ``items_per_s``,
    ``peak_rss_mb`` (NaN when absent). ``dataset`` is the record's ``dataset`` key if it has one, else
    the file name's part after the stage name (``encode-scifact.json``, ``encode/scifact.json``), else
    empty; the column is left out when every row's is empty. Rows follow the pipeline's stage order, then dataset.
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
    # Stages measure all datasets at once: a column of empty cells would only puzzle the reader.
    unused = ["dataset"] if len(table) and not table["dataset"].astype(bool).any() else []
    return table.drop(columns=["_order", *unused]).reset_index(drop=True)


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

    Columns: ``change`` (gain / loss), ``query_id``, ``query``, ``this run`` (a's ``metric``), ``baseline``
    (b's), ``delta`` (a - b) and ``this run's top 3`` / ``baseline's top 3``: the three best documents of each
    run as ``title [id]`` (the text's start where a document has no title; the id alone where it is the title).
    Only queries in both per-query dicts count; queries with delta 0 are left out. Ties are ordered by query id.
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
                    "this run": float(per_query_a[qid][metric]),
                    "baseline": float(per_query_b[qid][metric]),
                    "delta": delta,
                    "this run's top 3": "; ".join(_doc_label(corpus, d) for d in _top(run_a.get(qid, {}), 3)),
                    "baseline's top 3": "; ".join(_doc_label(corpus, d) for d in _top(run_b.get(qid, {}), 3)),
                }
            )
    return pd.DataFrame(rows, columns=["change", "query_id", "query", "this run", "baseline", "delta",
                                       "this run's top 3", "baseline's top 3"])


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


def write_index(reports_dir: str | Path, headline: pd.DataFrame, html_files: Iterable[str | Path], *,
                run: Sequence[str] = (), headline_intro: str = "", headline_verdicts: str = "",
                sections: Sequence[tuple[str, str, pd.DataFrame]] = ()) -> Path:
    """Write ``reports_dir/README.md``: what this run evaluated (``run``, Markdown lines), the headline table
    between ``headline_intro`` (what it shows) and ``headline_verdicts``, the ``sections`` that have rows
    (title, one sentence, table), links to the HTML notebooks, the figures (every PNG under ``reports_dir``)
    and the tables (CSV / Markdown), all as relative links."""
    reports_dir = Path(reports_dir)
    index = reports_dir / "README.md"

    def rel(p: Path) -> str:
        return Path(os.path.relpath(Path(p).resolve(), reports_dir.resolve())).as_posix()

    lines = ["# Report", "", *run, "", "## Headline", "", *([headline_intro, ""] if headline_intro else []),
             markdown_table(headline).rstrip(), "", *([headline_verdicts, ""] if headline_verdicts else [])]
    for title, sentence, table in sections:
        if len(table):
            lines += [f"## {title}", "", sentence, "", markdown_table(table).rstrip(), ""]
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


def ablation_table(ablations: pd.DataFrame) -> pd.DataFrame:
    """The experiments table as the index shows it: name, role, the params that differ, metrics x100."""
    if ablations.empty:
        return ablations
    shown = ablations[["experiment", "role"]].copy()
    for param in ablations.attrs.get("params", []):  # as written in params.yaml (a learning rate is not a 2-decimal number)
        shown[param] = ablations[param].map(str)
    for metric in ablations.attrs.get("metrics", []):
        shown[metric] = 100 * ablations[metric]
    return shown


def experiments_origin(ablations: pd.DataFrame, provenance: Mapping[str, Any]) -> str:
    """Which commit the snapshot's experiments ran on, beside this report's: a committed snapshot may be older
    than the code that draws it (rerun the experiments to compare them with today's code)."""
    baselines = ablations[ablations["role"] == "baseline"] if len(ablations) else ablations
    if baselines.empty:
        return ""
    rev, when = str(baselines["rev"].iloc[0]), baselines["timestamp"].iloc[0]
    here = str((provenance.get("git") or {}).get("revision") or "unknown")
    return (f"The experiments ran on commit `{rev[:7]}`" + (f" ({when})" if isinstance(when, str) and when else "")
            + f"; this report's code is commit `{here[:7]}`.")


def run_description(provenance: Mapping[str, Any]) -> list[str]:
    """Markdown lines saying what this run evaluated: an existing checkpoint, or the model trained here."""
    model = provenance.get("model") or {}
    if isinstance(model, str):  # a provenance.json written before revisions were recorded
        model = {"checkpoint": model}
    at = f" at hub commit `{model['revision'][:12]}`" if model.get("revision") else ""
    if model.get("checkpoint"):
        what = f"**Evaluated checkpoint**: `{model['checkpoint']}`{at} (existing; nothing was trained in this run)."
    else:
        start = (f"further from the checkpoint `{model['init_checkpoint']}`{at}" if model.get("init_checkpoint")
                 else f"from `{model.get('base_model')}`{at}")
        what = (f"**Evaluated model**: trained here {start} for {model.get('global_step')} steps"
                f"{_machine(model.get('trained_on'))} (parameters sha256 `{str(model.get('parameter_sha256'))[:16]}`).")
    seeds = provenance.get("seed") or {}
    git = provenance.get("git") or {}
    return [what, f"Seeds: base {seeds.get('base')}, training {seeds.get('train')}; code revision "
                  f"`{str(git.get('revision'))[:12]}`{' (with uncommitted changes)' if git.get('dirty') else ''}."]


# ---------------------------------------------------------------------------------------- helpers


def _machine(trained_on: Mapping[str, Any] | None) -> str:
    """Where training ran, from the provenance's record, e.g. ' on NVIDIA H200 (1 process, bf16 + tf32, torch 2.11.0)';
    one GPU per training process."""
    hardware = (trained_on or {}).get("hardware")
    if not hardware:  # a model trained before the record was kept
        return ""
    processes = trained_on.get("processes") or 1
    if hardware.get("gpu"):
        where = hardware["gpu"]
    else:
        where = f"{hardware.get('cpu_affinity') or hardware.get('cpu_count')} CPU cores"
    resolved = trained_on.get("precision") or {}
    precision = ("bf16" if resolved.get("bf16") else "fp32") + (" + tf32" if resolved.get("tf32") else "")
    torch_version = f", torch {trained_on['torch']}" if trained_on.get("torch") else ""
    return f" on {where} ({processes} process{'es' if processes > 1 else ''}, {precision}{torch_version})"


def _read_csv(path: Path) -> pd.DataFrame:
    # An empty table is written as a header alone, or as nothing at all when it has no columns.
    return pd.read_csv(path) if path.is_file() and path.stat().st_size > 1 else pd.DataFrame()


def _dataset_from_name(path: Path, stage: str) -> str:
    if path.parent.name == stage:
        return path.stem
    stem = path.stem
    if stem.startswith(stage) and len(stem) > len(stage):
        return stem[len(stage):].lstrip("-_@.")
    return ""


def _top(hits: Mapping[str, float], n: int) -> list[str]:
    return [doc for _, doc in sorted((-float(s), d) for d, s in hits.items())[:n]]


def _doc_label(corpus: Mapping[str, Any], doc: str) -> str:
    entry = corpus.get(doc)
    if isinstance(entry, Mapping):
        title = (entry.get("title") or "").strip() or (entry.get("text") or "").strip()
    else:
        title = str(entry or "").strip()
    title = title if len(title) <= 60 else title[:57] + "..."
    return f"{title} [{doc}]" if title and title != doc else f"[{doc}]"


# ------------------------------------------------------------------------------- report notebook


def reproduction_summary(table: pd.DataFrame, reference_label: str = "study", metric: str = "ndcg@10",
                         confidence: float = 0.95) -> str:
    """One Markdown line per dataset: "reproduced" only where the reference value lies inside the interval,
    then the other identical-id protocol's value and how many hits each protocol removed."""
    lines = []
    for row in table.to_dict("records"):
        value, low, high = row[metric], row["ci_low"], row["ci_high"]
        if pd.isna(row["reproduced"]):
            verdict = f"no {reference_label} value to compare with"
        elif row["reproduced"]:
            verdict = f"**reproduced**: the {reference_label} value {row['reference']:.2f} lies inside the interval"
        else:
            verdict = (f"**not reproduced**: the {reference_label} value {row['reference']:.2f} lies outside the "
                       f"interval ({row['difference']:+.2f} points)")
        line = (f"- {row['dataset']}: {metric} {value:.2f} ({confidence:.0%} CI {low:.2f}-{high:.2f}, {row['queries']} queries, "
                f"identical ids {row['identical_ids']}); {verdict}.")
        if "other_protocol" in row:
            removed = {"kept": 0, "dropped": row["self_hits"]}
            line += (f" With identical ids {row['other_protocol']}: {row[f'other_{metric}']:.2f} ({confidence:.0%} CI "
                     f"{row['other_ci_low']:.2f}-{row['other_ci_high']:.2f}). Hits removed: "
                     f"{removed[row['identical_ids']]} by the reported protocol, "
                     f"{removed[row['other_protocol']]} by the other.")
        lines.append(line)
    return "\n".join(lines)


def training_gain(train_metrics: Mapping[str, Any], metrics: Mapping[str, Mapping[str, float]],
                  metric: str = "ndcg@10") -> pd.DataFrame:
    """The held-out set's ``metric`` (x100) at step 0 and at the end of training, and the gain between them.

    Both come from the training's held-out evaluation (exact MaxSim, in the trainer's precision), so the gain
    compares like with like; the evaluate stage's score of the trained model (``retrieve.mode``, the stored
    dtype) is shown beside them, not subtracted.
    """
    columns = ["dataset", f"step 0 {metric}", f"end of training {metric}", "gain", f"evaluate stage {metric}"]
    heldout = train_metrics.get("heldout_dataset")
    start, end = train_metrics.get(f"heldout_start_{metric}"), train_metrics.get(f"heldout_end_{metric}")
    if not heldout or start is None:
        return pd.DataFrame(columns=columns)
    staged = metrics.get(heldout, {}).get(metric)
    return pd.DataFrame([dict(zip(columns, [heldout, 100 * start, None if end is None else 100 * end,
                                            None if end is None else 100 * (end - start),
                                            None if staged is None else 100 * staged], strict=True))])


def per_query_against_baseline(params, dataset: str, metric: str = "ndcg@10") -> pd.DataFrame | None:
    """Queries of ``dataset`` where this run gains and loses most against the baseline run.

    The baseline is the run file ``<params.report.baseline>/<dataset>.trec`` when that param is set,
    else the untrained model's run saved by the training stage; None when neither exists.
    """
    from colbench.beir_data import load_beir_folder
    from colbench.evaluate import evaluate_run, load_qrels
    from colbench.runs import read_trec

    reports = params.path("reports")
    base_dir = (params.file.parent / params.report.baseline) if params.report.baseline else reports / "train" / "baseline_runs"
    baseline_path = Path(base_dir) / f"{dataset}.trec"
    if params.report.baseline and not Path(base_dir).is_dir():  # asked for: a typo must not drop the comparison
        raise InputError(f"report.baseline is {params.report.baseline!r}, but {base_dir} is not a folder: point it at "
                         "a folder holding a run file <dataset>.trec per dataset (another run's data/runs/), or set "
                         "it to null to compare with the untrained model.")
    if not baseline_path.is_file():
        if params.report.baseline:
            warnings.warn(f"report.baseline {params.report.baseline!r} has no run for {dataset} ({baseline_path}): "
                          "that dataset is shown without the comparison", stacklevel=2)
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

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return write_report(load_params(argv[0] if argv else "params.yaml"))
    except InputError as exc:
        exit_with(exc)


def write_report(params) -> Path:
    """Export the executed notebooks to HTML and write the index of the pipeline ``params`` describes."""
    from colbench.experiments import table_from_file

    reports = params.path("reports")
    html = export_html(sorted((reports / "notebooks").glob("*.ipynb")), reports / "html")
    headline = pd.read_csv(reports / "study_table.csv")
    provenance = read_json(reports / "provenance.json")
    ablations = table_from_file(reports / "experiments.json")
    sections = [
        ("Ablations", "DVC experiments (metrics x100); the baseline is this pipeline's committed configuration. "
         + experiments_origin(ablations, provenance), ablation_table(ablations)),
        ("Seed variance", "The same configuration under several training seeds (x100): spread across seeds, and where "
         "the reference value lies.", _read_csv(reports / "seeds.csv")),
        ("Encoders", "The same recipe on other base encoders (x100): difference to the baseline with its paired "
         "bootstrap interval, and per-query wins and losses.", _read_csv(reports / "encoders.csv")),
    ]
    label, confidence = params.report.reference_label, params.evaluate.confidence
    intro = (f"NDCG@10 (x100) per dataset with its {confidence:.0%} bootstrap interval over queries, against the "
             f"{label} value (`report.reference_ndcg10`):")
    index = write_index(reports, headline, html, run=run_description(provenance), headline_intro=intro,
                        headline_verdicts=reproduction_summary(headline, label, confidence=confidence),
                        sections=sections)
    print(f"report: {len(html)} notebooks exported to {reports / 'html'}; index {index}")
    return index


if __name__ == "__main__":
    main()


