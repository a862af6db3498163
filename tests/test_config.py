"""params.yaml is validated once, and every mistake names its key."""

from pathlib import Path

import pytest
import yaml

from colbench.config import load_params
from colbench.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def write_params(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_study_params_describe_the_study():
    params = load_params(ROOT / "params.yaml")
    assert params.train.base_model == "answerdotai/ModernBERT-base"
    assert params.prepare.kd.source == "lightonai/ms-marco-en-bge"
    assert params.datasets == ["fiqa", "scifact", "nfcorpus", "arguana"]
    model, loss, args = params.train.model, params.train.loss, params.train.args
    assert (model.embedding_dim, model.query_length, model.document_length) == (128, 32, 180)
    assert (model.query_prefix, model.document_prefix, model.skiplist) == ("[Q] ", "[D] ", "punctuation")
    assert model.query_expansion and loss.normalize_scores and loss.n_ways == 32
    assert (args.learning_rate, args.num_train_epochs, args.warmup_ratio) == (8e-5, 1, 0.05)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 4)
    assert args.lr_scheduler_type == "linear" and params.base.seed == 42
    assert params.report.reference_ndcg10 == {"fiqa": 39.86, "scifact": 73.67, "nfcorpus": 33.98, "arguana": 30.98}


def test_demo_params_are_valid_and_offline():
    params = load_params(ROOT / "demo" / "params.yaml")
    assert params.train.base_model.startswith("pkg:")
    assert params.prepare.kd.source.startswith("builtin:")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["train"]["args"].update(learning_rate="fast"), "train.args.learning_rate must be a number"),
        (lambda d: d["train"]["args"].update(learning_rate=3.0), "train.args.learning_rate is 3.0"),
        (lambda d: d["train"]["args"].update(lerning_rate=1e-4), "unknown key train.args.lerning_rate"),
        (lambda d: d["train"]["loss"].update(masked_positions="ignore"), "train.loss.masked_positions is 'ignore'"),
        (lambda d: d["train"]["loss"].update(n_ways=1), "train.loss.n_ways is 1"),
        (lambda d: d["train"]["model"].pop("query_length"), "missing key train.model.query_length"),
        (lambda d: d["train"]["model"].update(query_expansion="yes"), "train.model.query_expansion must be true or false"),
        (lambda d: d["retrieve"].update(mode="fast"), "retrieve.mode is 'fast'"),
        (lambda d: d["retrieve"].update(k=0), "retrieve.k is 0"),
        (lambda d: d["train"]["args"].update(per_device_train_batch_size=2.5), "must be a whole number"),
        (lambda d: d["evaluate"]["ignore_identical_ids"].pop("arguana"), "ignore_identical_ids has no entry for ['arguana']"),
        (lambda d: d["train"]["eval"].update(dataset="msmarco"), "train.eval.dataset is 'msmarco'"),
        (lambda d: d.update(encode=[1]), "encode must be a mapping"),
    ],
)
def test_a_wrong_key_or_value_is_named(tmp_path, edit, message):
    with pytest.raises(InputError, match=None) as info:
        load_params(write_params(tmp_path, edit))
    assert message in str(info.value)


def test_yaml_style_exponent_is_accepted(tmp_path):
    path = write_params(tmp_path, lambda d: d["train"]["args"].update(learning_rate="8e-5"))
    assert load_params(path).train.args.learning_rate == 8e-5


def test_paths_resolve_against_the_params_file(tmp_path):
    params = load_params(write_params(tmp_path, lambda d: None))
    assert params.path("kd") == tmp_path / "data" / "kd"


def test_missing_file_says_where_to_run(tmp_path):
    with pytest.raises(InputError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
