"""params.yaml is validated once, and every mistake names its key."""

from pathlib import Path

import pytest

from colbench.config import load_params
from colbench.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_the_study_and_the_demo_params_load():
    assert load_params(ROOT / "params.yaml").datasets == ["fiqa", "scifact", "nfcorpus", "arguana"]
    assert load_params(ROOT / "demo" / "params.yaml").datasets == ["pydocs"]


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
        (lambda d: d["train"].update(checkpoint="a/b", init_checkpoint="c/d"), "are both set: keep one"),
        (lambda d: d["train"]["canary"].update(tolerance=2), "train.canary.tolerance is 2"),
        (lambda d: d["encode"].update(document_length=0), "encode.document_length is 0"),
        (lambda d: d["train"]["args"].update(max_steps=float("inf")), "train.args.max_steps must be a finite number"),
        (lambda d: d["train"]["loss"].update(temperature=float("nan")), "train.loss.temperature must be a finite number"),
        (lambda d: d["train"].update(micro_batch=3), "does not divide the optimizer step of 16 queries"),
        (lambda d: d["train"].update(distributed="ddp", num_processes=3), "does not divide the optimizer step of 16"),
        (lambda d: d["train"].update(attn_implementation="flash_attention_2"), "flash_attention_2 needs train.model.attend_to_expansion_tokens"),
        (lambda d: d["train"].update(pack_documents=True, attn_implementation="eager"), "train.pack_documents brings its own attention"),
        (lambda d: d["train"]["args"].update(save_total_limit=1), "train.args.save_total_limit is 1; it must be >= 2"),
        (lambda d: d["retrieve"].update(k=10), "retrieve.k is 10, but metrics are computed down to rank 100"),
        (lambda d: d["retrieve"].update(ef_search=16), "retrieve.ef_search has 16, below retrieve.tokens_per_query_token (100)"),
        (lambda d: d["retrieve"].update(tradeoff_ef_search=[32, 200]), "retrieve.tradeoff_ef_search has 32, below"),
        (lambda d: d["base"].update(seed=-1), "base.seed is -1"),
        (lambda d: d["report"]["reference_ndcg10"].update(fiqa=0.3986), "report.reference_ndcg10.fiqa is 0.3986: give"),
        (lambda d: d["train"].update(seed=2**32), "train.seed is 4294967296"),
    ],
)
def test_a_wrong_key_or_value_is_named(edited_params, edit, message):
    with pytest.raises(InputError, match=None) as info:
        load_params(edited_params(edit))
    assert message in str(info.value)


def test_yaml_style_exponent_is_accepted(edited_params):
    path = edited_params(lambda d: d["train"]["args"].update(learning_rate="8e-5"))
    assert load_params(path).train.args.learning_rate == 8e-5


def test_outputs_live_below_the_params_files_folder(tmp_path, edited_params):
    params = load_params(edited_params(lambda d: None))
    assert params.path("kd") == tmp_path / "data" / "kd"


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- base\n- train\n")
    with pytest.raises(InputError, match="must be a mapping of sections"):
        load_params(path)


def test_a_key_given_twice_is_refused_by_line(tmp_path):
    # PyYAML would keep the second silently; DVC refuses the file.
    path = tmp_path / "params.yaml"
    study = (ROOT / "params.yaml").read_text(encoding="utf-8")
    path.write_text(study.replace("  args:\n", "  args:\n    learning_rate: 1.0e-4\n", 1), encoding="utf-8")
    added = study[:study.index("  args:\n")].count("\n") + 2  # the line after args:, where the study's comes next
    with pytest.raises(InputError, match=rf"params.yaml:{added + 1}: the key 'learning_rate' appears twice in one "
                                         rf"section \(first on line {added}\)"):
        load_params(path)


def test_missing_file_says_where_to_run(tmp_path):
    with pytest.raises(InputError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
