import copy
import math

import numpy as np
import pytest

from colbench.errors import InputError
from colbench.evaluate import evaluate_run, load_qrels, metric_names, paired_bootstrap

L3, L5 = math.log2(3), math.log2(5)

# q1 ranks d3 (rel 0), d1 (rel 2), d9 (unjudged), d2 (rel 1); q2 ranks d5, d4 (rel 1);
# q3 is judged but has no results; "qx" is in the run only.
QRELS = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d4": 1}, "q3": {"d5": 1}}
RUN = {
    "q1": {"d3": 0.9, "d1": 0.8, "d9": 0.7, "d2": 0.6},
    "q2": {"d5": 0.5, "d4": 0.4},
    "qx": {"d1": 1.0},
}


def test_hand_worked_metrics():
    agg, per_query = evaluate_run(RUN, QRELS, ignore_identical_ids=False)
    # NDCG@10 (linear gain, log2(rank + 1) discount):
    #   q1: DCG = 0/1 + 2/log2(3) + 0/2 + 1/log2(5); ideal = 2/1 + 1/log2(3)
    #   q2: DCG = 1/log2(3); ideal = 1.  q3: no results -> 0.
    q1_ndcg = (2 / L3 + 1 / L5) / (2 + 1 / L3)
    assert per_query["q1"]["ndcg@10"] == pytest.approx(q1_ndcg)  # 0.6433
    assert per_query["q2"]["ndcg@10"] == pytest.approx(1 / L3)  # 0.6309
    assert agg["ndcg@10"] == pytest.approx((q1_ndcg + 1 / L3) / 3)
    # Recall@100: q1 finds d1 and d2 (2/2), q2 finds d4 (1/1), q3 nothing -> 2/3.
    assert agg["recall@100"] == pytest.approx(2 / 3)
    # MAP@100: q1 relevant at ranks 2 and 4 -> (1/2 + 2/4) / 2 = 0.5; q2 rank 2 -> 0.5; q3 0 -> 1/3.
    assert agg["map@100"] == pytest.approx(1 / 3)
    # MRR@10: first relevant at rank 2 for q1 and q2 -> (0.5 + 0.5 + 0) / 3.
    assert agg["mrr@10"] == pytest.approx(1 / 3)
    # NDCG@1: the top hit is never relevant.
    assert agg["ndcg@1"] == 0.0
    assert per_query["q3"] == dict.fromkeys(metric_names(), 0.0)
    assert (agg["queries"], agg["queries_without_results"], agg["run_queries_without_qrels"]) == (3, 1, 1)
    assert set(per_query) == {"q1", "q2", "q3"}


def test_metric_names_always_include_the_headline_metrics():
    agg, _ = evaluate_run(RUN, QRELS, k_values=[5], ignore_identical_ids=False)
    for name in ("ndcg@10", "recall@100", "map@100", "mrr@10", "ndcg@5"):
        assert 0.0 <= agg[name] <= 1.0


@pytest.mark.parametrize("ignore, expected_mrr, expected_ndcg", [(True, 1.0, 1.0), (False, 0.5, 1 / L3)])
def test_identical_id_policy(ignore, expected_mrr, expected_ndcg):
    # ArguAna-style: the query is itself a corpus document and comes back first.
    qrels = {"a1": {"a2": 1}}
    run = {"a1": {"a1": 0.9, "a2": 0.8}}
    agg, _ = evaluate_run(run, qrels, ignore_identical_ids=ignore)
    assert agg["mrr@10"] == pytest.approx(expected_mrr)
    assert agg["ndcg@10"] == pytest.approx(expected_ndcg)


def test_inputs_are_not_mutated():
    run = {"a1": {"a1": 0.9, "a2": 0.8}, **RUN}
    qrels = {"a1": {"a2": 1}, **QRELS}
    run_before, qrels_before = copy.deepcopy(run), copy.deepcopy(qrels)
    evaluate_run(run, qrels, ignore_identical_ids=True)
    assert run == run_before and qrels == qrels_before


def test_ties_are_broken_by_doc_id_ascending_and_mrr_is_cut_at_k():
    agg, _ = evaluate_run({"q": {"dB": 0.5, "dA": 0.5}}, {"q": {"dA": 1}}, ignore_identical_ids=False)
    assert agg["mrr@10"] == 1.0 and agg["ndcg@1"] == 1.0
    # Relevant document at rank 11: outside MRR@10 and NDCG@10, inside Recall@100.
    run = {"q": {f"n{i:02d}": 1.0 - i / 100 for i in range(10)} | {"rel": 0.5}}
    agg, _ = evaluate_run(run, {"q": {"rel": 1}}, ignore_identical_ids=False)
    assert (agg["mrr@10"], agg["ndcg@10"], agg["recall@100"]) == (0.0, 0.0, 1.0)
    assert agg["mrr@100"] == pytest.approx(1 / 11)


@pytest.mark.parametrize(
    "run, qrels, message",
    [
        ({"q": {"d": 1.0}}, {}, "qrels are empty"),
        ({"q": {"d": float("nan")}}, {"q": {"d": 1}}, "'d' has score nan"),
    ],
)
def test_bad_input_is_named(run, qrels, message):
    with pytest.raises(InputError, match=message):
        evaluate_run(run, qrels, ignore_identical_ids=False)


def test_load_qrels_reads_beir_tsv(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\n1\t10\t1\n1\t11\t2\n2\t10\t0\n", encoding="utf-8")
    assert load_qrels(path) == {"1": {"10": 1, "11": 2}, "2": {"10": 0}}


@pytest.mark.parametrize("text, message", [("query-id\tcorpus-id\tscore\n1\t10\tx\n", ":2: relevance 'x'"),
                                            ("query-id\tcorpus-id\tscore\n1\t10\n", ":2: expected")])
def test_load_qrels_names_the_bad_line(tmp_path, text, message):
    path = tmp_path / "test.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        load_qrels(path)


def _bernoulli(p, n, rng):
    return {f"q{i}": {"m": float(v)} for i, v in enumerate(rng.random(n) < p)}


def test_bootstrap_interval_covers_known_mean_at_nominal_rate():
    rng = np.random.default_rng(0)
    trials, covered = 200, 0
    for trial in range(trials):
        result = paired_bootstrap(_bernoulli(0.3, 300, rng), metric="m", samples=400, seed=trial)
        assert result["low"] <= result["mean"] <= result["high"]
        covered += result["low"] <= 0.3 <= result["high"]
    # Nominal 95 %; the binomial standard error over 200 trials is about 1.5 points.
    assert 0.89 <= covered / trials <= 0.99


def test_bootstrap_is_seeded_and_paired():
    rng = np.random.default_rng(1)
    a = _bernoulli(0.5, 100, rng)
    assert paired_bootstrap(a, metric="m", seed=7) == paired_bootstrap(a, metric="m", seed=7)
    # b = a - 0.1 on every query: the paired difference has no spread at all.
    b = {q: {"m": v["m"] - 0.1} for q, v in a.items()}
    diff = paired_bootstrap(a, b, metric="m")
    assert diff["mean"] == pytest.approx(0.1)
    assert diff["low"] == pytest.approx(0.1) and diff["high"] == pytest.approx(0.1)
    assert diff["mean_a"] - diff["mean_b"] == pytest.approx(0.1)


def test_bootstrap_rejects_mismatched_queries():
    with pytest.raises(InputError, match="baseline lacks 1"):
        paired_bootstrap({"q1": {"m": 1.0}, "q2": {"m": 0.0}}, {"q1": {"m": 1.0}}, metric="m")
    with pytest.raises(InputError, match="no metric 'ndcg@10'"):
        paired_bootstrap({"q1": {"m": 1.0}}, metric="ndcg@10")


def test_both_identical_id_protocols_on_ids_that_collide():
    # Numeric ids in both namespaces, as FiQA and SciFact have: query "1"'s own id names an unrelated document.
    from colbench.evaluate import evaluate_protocols

    qrels = {"1": {"7": 1}, "2": {"2": 1}}  # query "2" is itself document "2" and judged relevant (a self-hit)
    run = {"1": {"1": 0.9, "7": 0.8}, "2": {"2": 0.9, "5": 0.1}}
    metrics, kept, dropped = evaluate_protocols(run, qrels, ignore_identical_ids=False)
    assert (metrics["identical_ids"], metrics["self_hits"]) == ("kept", 2)
    # Kept (the study's PyLate evaluation): q1 finds "7" at rank 2, q2 "2" at rank 1.
    assert kept["1"]["ndcg@10"] == pytest.approx(1 / L3) and kept["2"]["ndcg@10"] == 1.0
    # Dropped (BEIR): q1's unrelated "1" goes and "7" moves up; q2 loses its relevant self-hit.
    assert dropped["1"]["ndcg@10"] == 1.0 and dropped["2"]["ndcg@10"] == 0.0
    assert metrics["other_protocol"]["identical_ids"] == "dropped"
    assert metrics["other_protocol"]["ndcg@10"] == pytest.approx(0.5)
    assert metrics["ndcg@10"] == pytest.approx((1 / L3 + 1) / 2)
    again, _, _ = evaluate_protocols(run, qrels, ignore_identical_ids=True)
    assert (again["identical_ids"], again["ndcg@10"], again["other_protocol"]["identical_ids"]) == ("dropped", 0.5, "kept")
