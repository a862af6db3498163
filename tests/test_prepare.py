"""The prepare stage: KD set and BEIR sets from the hub format, local folders, downloads and the builtin demo."""

from __future__ import annotations

import json
import shutil
import socket
import textwrap
import zipfile
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from colbench import beir_data, evaluate, hub, kd
from colbench.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures"
MSMARCO = FIXTURES / "msmarco_tiny"
BEIR = FIXTURES / "beir_tiny"
REV = "11e6ffa1d22f461579f451eb31bdc964244cb61f"
HUB_FILES = {"train": "dataset.parquet", "queries": "english_queries.train.parquet",
             "documents": "english_collection.parquet"}



def fake_hub(monkeypatch, cache_dir=None):
    """Serve lightonai/ms-marco-en-bge from the tiny fixture through the real datasets loader (its cache files
    under ``cache_dir`` when given)."""
    real = datasets.load_dataset

    def load(source, config, split, revision=None):
        assert source == "lightonai/ms-marco-en-bge" and split == "train"
        return real(str(MSMARCO), config, split=split, cache_dir=cache_dir and str(cache_dir))

    monkeypatch.setattr(datasets, "load_dataset", load)


def kd_kwargs(**over):
    return {"revision": None, "max_samples": None, "seed": 0, "n_ways_min": 8, **over}


def local_kd(tmp_path, fmt="parquet", edit=None):
    """A local folder in the ms-marco-en-bge schema, as .parquet or .jsonl; ``edit`` changes the tables first."""
    folder = tmp_path / "src"
    folder.mkdir()
    tables = {name: pq.read_table(MSMARCO / file).to_pylist() for name, file in HUB_FILES.items()}
    if edit:
        edit(tables)
    for name, rows in tables.items():
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), folder / f"{name}.parquet")
        else:
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# ---------------------------------------------------------------------------------------- KD


def test_hub_format_is_written_in_the_contract_schema(tmp_path, monkeypatch):
    fake_hub(monkeypatch)
    out = tmp_path / "kd"
    manifest = kd.prepare_kd("lightonai/ms-marco-en-bge", out, **kd_kwargs(revision=REV, max_samples=5))
    train = pq.read_table(out / "train.parquet")
    assert train.schema == pa.schema([("query_id", pa.string()), ("document_ids", pa.list_(pa.string())),
                                      ("scores", pa.list_(pa.float64()))])
    source_train = pq.read_table(MSMARCO / "dataset.parquet").slice(0, 5)
    assert train["query_id"].to_pylist() == source_train["query_id"].to_pylist()  # first N, stored order
    assert train["document_ids"].to_pylist() == source_train["document_ids"].to_pylist()
    docs = pq.read_table(out / "documents.parquet")
    referenced = {d for ids in train["document_ids"].to_pylist() for d in ids}
    assert set(docs["document_id"].to_pylist()) == referenced  # only referenced documents
    assert pq.read_table(out / "queries.parquet")["query_id"].to_pylist() == train["query_id"].to_pylist()
    assert manifest["revision"] == REV and manifest["n_train"] == 5 and manifest["n_documents"] == len(referenced)
    assert kd.check_kd_dir(out, n_ways_min=8) == json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_local_folder_matches_the_hub_result(tmp_path, monkeypatch, fmt):
    fake_hub(monkeypatch)
    kd.prepare_kd("lightonai/ms-marco-en-bge", tmp_path / "hub", **kd_kwargs())
    kd.prepare_kd(str(local_kd(tmp_path, fmt)), tmp_path / "local", **kd_kwargs())
    for name in ("train", "queries", "documents"):
        assert pq.read_table(tmp_path / "local" / f"{name}.parquet").equals(
            pq.read_table(tmp_path / "hub" / f"{name}.parquet"))


def _drop_doc(t):
    t["documents"] = [d for d in t["documents"] if d["document_id"] != t["train"][0]["document_ids"][3]]


def _nan(t):
    t["train"][2]["scores"][1] = float("nan")


def _short(t):
    t["train"][4]["document_ids"] = t["train"][4]["document_ids"][:5]
    t["train"][4]["scores"] = t["train"][4]["scores"][:5]


def _lengths(t):
    t["train"][1]["scores"] = t["train"][1]["scores"][:-1]


def _dup(t):
    t["documents"].append(dict(t["documents"][0]))


def _empty(t):
    t["queries"][3]["text"] = "  "


def _rename(t):
    t["queries"] = [{"qid": q["query_id"], "text": q["text"]} for q in t["queries"]]


def _int_ids(t):
    t["queries"] = [{"query_id": int(q["query_id"]), "text": q["text"]} for q in t["queries"]]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_drop_doc, r"1 document id\(s\) referenced by train are not in documents, e.g. '10"),
        (_nan, r"non-finite score.*query '502'"),
        (_short, r"fewer than n_ways=8 candidates, e.g. query '504'"),
        (_lengths, r"different number of scores and document_ids, e.g. query '501'"),
        (_dup, r"duplicate document_id\(s\), e.g. '1000'"),
        (_empty, r"queries have an empty text, e.g. query_id '503'"),
        (_rename, r"queries has columns \['qid', 'text'\]; expected \['query_id', 'text'\]"),
        (_int_ids, r"queries.query_id is int64, expected string"),
    ],
)
def test_bad_kd_input_is_refused_and_nothing_written(tmp_path, edit, needle):
    folder = local_kd(tmp_path, "parquet", edit)
    with pytest.raises(InputError, match=needle):
        kd.prepare_kd(str(folder), tmp_path / "kd", **kd_kwargs())
    assert not (tmp_path / "kd").exists()


def test_offline_without_cache_names_the_dataset_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    with pytest.raises(InputError) as err:
        kd.prepare_kd("lightonai/ms-marco-en-bge", tmp_path / "kd", **kd_kwargs(revision=REV))
    message = str(err.value)
    assert "lightonai/ms-marco-en-bge" in message and REV in message
    assert "hf download --repo-type dataset" in message and "local folder" in message


def test_offline_the_set_hf_download_cached_is_prepared(tmp_path, hub_cache):
    # The route the offline error and `make study`'s resource check give: `hf download` elsewhere, the cache copied
    # here. Offline, datasets loads a hub id only from its own Arrow cache, which `hf download` does not fill.
    hub_cache("lightonai/ms-marco-en-bge", {REV: MSMARCO}, latest=None)
    assert hub.cached_snapshot("lightonai/ms-marco-en-bge", "dataset", REV)  # what the resource check sees
    manifest = kd.prepare_kd("lightonai/ms-marco-en-bge", tmp_path / "kd", **kd_kwargs(revision=REV))
    assert manifest["revision"] == REV and manifest["n_train"] == 12


def test_offline_nanobeir_is_read_from_the_hub_cache(tmp_path, hub_cache):
    # Loaded offline (from the hub id the libraries would refuse), and recorded under its id, not this machine's
    # path: the checkpoints' configuration includes the evaluator, and a run killed online may resume offline.
    from colbench.heldout import make_evaluator
    from colbench.train import evaluator_identity

    hub_cache(hub.NANOBEIR, {"b" * 40: FIXTURES / "nanobeir_tiny"}, latest="b" * 40)
    evaluator = make_evaluator("nanobeir", nanobeir_subsets=["scifact"])
    assert evaluator.dataset_id == hub.NANOBEIR
    assert str(tmp_path) not in json.dumps(evaluator_identity(evaluator), default=str)


def test_unreachable_hub_goes_offline_instead_of_retrying(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # as imported without the variable
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []
    monkeypatch.setattr(hub, "reachable", lambda url, timeout=3.0: asked.append(url) or False)
    seen = {}

    def load(source, config, split, revision=None):
        seen[config] = datasets.config.HF_HUB_OFFLINE
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", load)
    with pytest.raises(InputError, match="offline and it is not in the Hugging Face cache"):
        kd.prepare_kd("lightonai/ms-marco-en-bge", tmp_path / "kd", **kd_kwargs())
    assert asked and seen == {"train": True}  # the hub was asked once, then the libraries went offline
    assert datasets.config.HF_HUB_OFFLINE is False  # restored afterwards


@pytest.mark.parametrize(("asked", "cached", "recorded"), [(None, "a" * 40, "a" * 40), (REV, REV, REV), (REV, "a" * 40, None)])
def test_revision_is_the_commit_the_cache_holds(tmp_path, monkeypatch, asked, cached, recorded):
    # The datasets cache keeps a hub dataset under <config>/<version>/<commit sha>/: a folder of that name in
    # the cache files' path is what the loaded dataset's revision is read from.
    fake_hub(monkeypatch, cache_dir=tmp_path / "datasets-cache" / cached)
    if recorded is None:
        with pytest.raises(InputError, match=f"revision {REV} was asked for but the cache holds a{{40}}"):
            kd.prepare_kd("lightonai/ms-marco-en-bge", tmp_path / "kd", **kd_kwargs(revision=asked))
    else:
        manifest = kd.prepare_kd("lightonai/ms-marco-en-bge", tmp_path / "kd", **kd_kwargs(revision=asked))
        assert manifest["revision"] == recorded


def test_check_kd_dir_catches_an_edited_file(tmp_path, monkeypatch):
    fake_hub(monkeypatch)
    kd.prepare_kd("lightonai/ms-marco-en-bge", tmp_path / "kd", **kd_kwargs())
    table = pq.read_table(tmp_path / "kd" / "queries.parquet").slice(0, 3)
    pq.write_table(table, tmp_path / "kd" / "queries.parquet")
    with pytest.raises(InputError, match="does not match its sha256"):
        kd.check_kd_dir(tmp_path / "kd")


# -------------------------------------------------------------------------------------- BEIR


def test_beir_folder_is_copied_with_queries_without_qrels_dropped(tmp_path):
    out = tmp_path / "scifact"
    manifest = beir_data.prepare_beir("tiny", str(BEIR), out)
    queries = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert [q["_id"] for q in queries] == ["q1", "q2", "q3"]
    assert manifest["n_queries_dropped_without_qrels"] == 1 and manifest["n_documents"] == 5
    corpus = [json.loads(line) for line in (out / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    assert corpus[4] == {"_id": "d5", "title": "Bees",
                         "text": "Honey bees make honey from flower nectar. Café owners love it."}
    assert (out / "qrels" / "test.tsv").read_text() == (BEIR / "qrels" / "test.tsv").read_text()
    assert beir_data.check_beir_dir(out)["n_queries"] == 3


def _copy_beir(tmp_path):
    folder = tmp_path / "beir"
    shutil.copytree(BEIR, folder)
    return folder


@pytest.mark.parametrize(
    ("file", "content", "needle"),
    [
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td9\t1\nq2\td8\t1\n",
         r"2 of 2 qrels reference documents not in the folder, e.g. 'd9': the qrels and the corpus do not belong"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq7\td1\t1\n", r"reference queries .* 'q7'"),
        ("qrels/test.tsv", "q1\td1\t1\n", r"test.tsv:1: expected the header"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n", r"test.tsv:2: expected"),
        ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n', r"corpus.jsonl:2: duplicate _id 'd1'"),
        ("corpus.jsonl", "", r"corpus.jsonl is empty"),
        ("queries.jsonl", '{"_id": "q1", "text": "a"}\n{"_id": "q2", "te', r"queries.jsonl:2: truncated or corrupt"),
        ("queries.jsonl", '{"_id": "q1", "text": "ok"}\n{"_id": "q2", "text": "caf\xe9"}\n', r"queries.jsonl:2: not UTF-8"),
        ("queries.jsonl", '{"_id": 1, "text": "a"}\n', r"queries.jsonl:1: _id must be a non-empty string"),
    ],
)
def test_bad_beir_folder_is_refused(tmp_path, file, content, needle):
    folder = _copy_beir(tmp_path)
    # latin-1 writes the one non-UTF-8 byte case as a real 0xE9 byte.
    (folder / file).write_bytes(content.encode("latin-1"))
    with pytest.raises(InputError, match=needle):
        beir_data.prepare_beir("tiny", str(folder), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_qrel_of_a_document_the_corpus_lacks_is_kept_as_beir_keeps_it(tmp_path):
    # ArguAna's test qrels judge one document its corpus lacks (beir-cellar/beir#101); BEIR and PyLate keep the
    # qrel, so the published NDCG@10 counts it: a relevant document no run can return.
    folder = _copy_beir(tmp_path)
    with open(folder / "qrels" / "test.tsv", "a") as qrels:
        qrels.write("q1\tgone\t1\n")
    with pytest.warns(UserWarning, match=r"prepare.datasets.tiny: 1 of 5 qrels judge documents the corpus lacks \('gone'\)"):
        manifest = beir_data.prepare_beir("tiny", str(folder), tmp_path / "out")
    assert manifest["qrels_to_missing_documents"] == [["q1", "gone", 1]] and manifest["n_qrels"] == 5
    assert beir_data.check_beir_dir(tmp_path / "out")["n_qrels"] == 5
    qrels = evaluate.load_qrels(tmp_path / "out" / "qrels" / "test.tsv")
    metrics, per_query = evaluate.evaluate_run({"q1": {"d1": 2.0, "d2": 1.0}}, qrels, ignore_identical_ids=False)
    assert per_query["q1"]["recall@10"] == 0.5  # d1 found, "gone" cannot be


def test_missing_split_lists_the_splits_there(tmp_path):
    with pytest.raises(InputError, match=r"qrels/dev.tsv \(splits here: \['test'\]\)"):
        beir_data.prepare_beir("tiny", str(BEIR), tmp_path / "out", split="dev")


def _zip_of_tiny(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(BEIR.rglob("*")):
            if file.is_file():
                zf.write(file, f"tiny/{file.relative_to(BEIR).as_posix()}")


def test_download_path_uses_the_beir_url_and_the_cache(tmp_path, beir_server):
    served, paths = beir_server
    _zip_of_tiny(served / "tiny.zip")
    manifest = beir_data.prepare_beir("tiny", "tiny", tmp_path / "a")
    beir_data.prepare_beir("tiny", "tiny", tmp_path / "b")  # second time: the cached folder is reused
    assert paths == ["/tiny.zip"] and manifest["url"] == hub.BEIR_URL.format(name="tiny")
    assert (tmp_path / "cache" / "tiny" / "corpus.jsonl").is_file()
    assert (tmp_path / "a" / "corpus.jsonl").read_bytes() == (tmp_path / "b" / "corpus.jsonl").read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny"]  # no partial leftovers


def test_the_beir_url_is_beirs():
    assert hub.BEIR_URL.format(name="fiqa") == "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/fiqa.zip"


@pytest.mark.parametrize("failure", ["refused", "not-found", "not-a-zip", "silent"])
def test_failed_download_names_the_url_and_leaves_no_partial_zip(tmp_path, beir_server, monkeypatch, failure):
    served, _ = beir_server
    listener = None
    if failure == "not-a-zip":
        (served / "fiqa.zip").write_text("<html>Service unavailable</html>")
    if failure in ("refused", "silent"):
        # "silent": a server that takes the connection and never answers (beir's own download would wait forever).
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if failure == "refused":
            listener.close()
        monkeypatch.setattr(hub, "BEIR_URL", f"http://127.0.0.1:{port}/{{name}}.zip")
        monkeypatch.setattr(hub, "DOWNLOAD_TIMEOUT", 1)
    with pytest.raises(InputError) as err:
        beir_data.prepare_beir("fiqa", "fiqa", tmp_path / "out")
    assert hub.BEIR_URL.format(name="fiqa") in str(err.value)
    assert "local BEIR folder" in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []
    if listener:
        listener.close()


# ---------------------------------------------------------------------------- builtin demo set


def _fake_stdlib(root):
    body = "The body carries enough words for the filter, it talks about the topic at a reasonable length here."
    for m in range(40):
        (root / f"mod{m:02d}.py").write_text(textwrap.dedent(f'''
            def topic():
                """Describe topic number {m} of the library.

                Topic {m}. {body}
                """
        '''))


def test_builtin_kd_and_beir_share_a_corpus_with_disjoint_queries_and_repeat_bytes(tmp_path):
    (tmp_path / "lib").mkdir()
    _fake_stdlib(tmp_path / "lib")
    options = {"n_documents": 24, "n_eval_queries": 6, "n_train_queries": 8, "n_candidates": 4,
               "stdlib_dir": str(tmp_path / "lib")}
    kw = {"revision": None, "max_samples": None, "seed": 5, "n_ways_min": 4, "builtin_options": options}
    kd.prepare_kd("builtin:python-docs", tmp_path / "kd1", **kw)
    kd.prepare_kd("builtin:python-docs", tmp_path / "kd2", **kw)
    for name in ("train.parquet", "queries.parquet", "documents.parquet", "manifest.json"):
        assert (tmp_path / "kd1" / name).read_bytes() == (tmp_path / "kd2" / name).read_bytes()
    beir_data.prepare_beir("pydocs", "builtin:python-docs", tmp_path / "ev", seed=5, builtin_options=options)
    corpus = {json.loads(x)["_id"] for x in (tmp_path / "ev" / "corpus.jsonl").read_text().splitlines()}
    eval_q = {json.loads(x)["_id"] for x in (tmp_path / "ev" / "queries.jsonl").read_text().splitlines()}
    train = pq.read_table(tmp_path / "kd1" / "train.parquet")
    assert len(corpus) == 24 and len(eval_q) == 6 and train.num_rows == 8
    assert not eval_q & set(train["query_id"].to_pylist())
    kd_docs = set(pq.read_table(tmp_path / "kd1" / "documents.parquet")["document_id"].to_pylist())
    assert kd_docs <= corpus
    kd.check_kd_dir(tmp_path / "kd1", n_ways_min=4)
    beir_data.check_beir_dir(tmp_path / "ev")


def test_builtin_with_too_few_candidates_for_n_ways_is_refused(tmp_path):
    with pytest.raises(InputError, match="n_candidates"):
        kd.prepare_kd("builtin:python-docs", tmp_path / "kd",
                           **kd_kwargs(n_ways_min=32, builtin_options={"n_candidates": 16}))
