"""Robustness sweep: malformed inputs through the prepare, encode, index and evaluate entry points.

Each case asserts the documented outcome: either an InputError whose message names the file, key or id
(and nothing written, a previous good output left byte for byte as it was), or the documented handling
(a 1 MB document is truncated to the document length and counted; unicode text and ids round-trip; a
query without qrels is dropped or counted). The second half covers input errors of docs/input-errors.md
(generated from the code) that no module test reaches.
"""

from __future__ import annotations

import json
import shutil
import stat
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from colbench import atomic, beir_data, evaluate, experiments, figures, hub, kd, pydocs, report, train
from colbench import encode as encode_module
from colbench import model as model_module
from colbench.config import load_params
from colbench.encode import check_free_disk, encode_to_store
from colbench.errors import InputError
from colbench.index import build_index, open_index
from colbench.runs import read_trec, write_trec
from colbench.store import EmbeddingStore, open_store, write_store

FIXTURES = Path(__file__).parent / "fixtures"
BEIR = FIXTURES / "beir_tiny"
MSMARCO = FIXTURES / "msmarco_tiny"
KD_TINY = FIXTURES / "kd_tiny"
COLBERT = FIXTURES / "pylate" / "bert" / "pylate-colbert"
ROOT = Path(__file__).resolve().parents[1]
HUB_FILES = {"train": "dataset.parquet", "queries": "english_queries.train.parquet",
             "documents": "english_collection.parquet"}
# Text the sweep must carry through unchanged: combining accent, zero-width joiner, right-to-left script,
# emoji outside the BMP, CJK, the JSON-legal line separators U+2028 / U+0085 and an escaped NUL.
UNICODE_TEXT = "Cafe\u0301 \u200d\U0001F600 \u05e9\u05dc\u05d5\u05dd \u6587\u6863 line\u2028sep\u0085nel a\x00b"



def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: compared before and after a refused run."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_temporaries(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# ============================================================================ prepare: BEIR folders


def beir_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "beir"
    if not folder.exists():
        shutil.copytree(BEIR, folder)
    return folder


def append_line(path: Path, record: dict | str) -> None:
    line = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def _truncated_line(f):
    text = (f / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    text[2] = text[2][: len(text[2]) // 2]
    (f / "corpus.jsonl").write_text("\n".join(text) + "\n", encoding="utf-8")


def _renamed_text_column(f):
    rows = [json.loads(x) for x in (f / "queries.jsonl").read_text().splitlines()]
    (f / "queries.jsonl").write_text("".join(json.dumps({"_id": r["_id"], "query": r["text"]}) + "\n" for r in rows))


def _duplicate_query(f):
    append_line(f / "queries.jsonl", {"_id": "q2", "text": "again"})


def _surrogate(f):
    append_line(f / "corpus.jsonl", '{"_id": "d9", "title": "", "text": "caf\\udce9"}')


def _id_with_space(f):
    append_line(f / "corpus.jsonl", {"_id": "d 9", "title": "", "text": "spaced id"})


def _text_not_a_string(f):
    append_line(f / "corpus.jsonl", {"_id": "d9", "title": "", "text": 12.5})


def _blank_judged_query(f):
    rows = [json.loads(x) for x in (f / "queries.jsonl").read_text().splitlines()]
    rows[1]["text"] = " \t "
    (f / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _not_an_object(f):
    append_line(f / "corpus.jsonl", '["d9", "a list"]')


def _bom(f):
    (f / "corpus.jsonl").write_bytes(b"\xef\xbb\xbf" + (f / "corpus.jsonl").read_bytes())


def _qrels_conflict(f):
    with open(f / "qrels" / "test.tsv", "a") as handle:
        handle.write("q1\td1\t2\n")


def _qrels_not_utf8(f):
    with open(f / "qrels" / "test.tsv", "ab") as handle:
        handle.write(b"q1\td\xe91\t1\n")


def _qrels_header_only(f):
    (f / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_truncated_line, r"corpus.jsonl:3: truncated or corrupt JSON"),
        (_renamed_text_column, r"queries.jsonl:1: missing key\(s\) \['text'\]; expected \['_id', 'text'\], found \['_id', 'query'\]"),
        (_duplicate_query, r"queries.jsonl:5: duplicate _id 'q2' \(first on line 2\)"),
        (_surrogate, r"corpus.jsonl:6: an unpaired surrogate escape \('\\udce9'\)"),
        (_id_with_space, r"corpus.jsonl:6: _id 'd 9' contains whitespace"),
        (_text_not_a_string, r"corpus.jsonl:6: text of 'd9' is float, expected a string"),
        (_blank_judged_query, r"queries.jsonl: 1 judged quer\(ies\) have an empty text, e.g. 'q2'"),
        (_not_an_object, r"corpus.jsonl:6: expected a JSON object, found list"),
        (_bom, r"corpus.jsonl:1: truncated or corrupt JSON \(Unexpected UTF-8 BOM"),
        (_qrels_conflict, r"test.tsv:6: qrel \('q1', 'd1'\) repeated with a different score \(1 vs 2\)"),
        (_qrels_not_utf8, r"test.tsv:6: not UTF-8"),
        (_qrels_header_only, r"test.tsv: no qrels; the split has nothing to evaluate"),
    ],
)
def test_malformed_beir_folder_is_refused_and_the_previous_output_kept(tmp_path, damage, needle):
    out = tmp_path / "out"
    beir_data.prepare_beir("tiny", str(BEIR), out)
    before = snapshot(out)
    folder = beir_copy(tmp_path)
    damage(folder)
    with pytest.raises(InputError, match=needle):
        beir_data.prepare_beir("tiny", str(folder), out)
    assert snapshot(out) == before and no_temporaries(tmp_path)


def test_unicode_and_a_1mb_document_round_trip_through_prepare(tmp_path):
    folder = beir_copy(tmp_path)
    big = "lorem ipsum " * ((1 << 20) // 12)  # about 1 MB
    append_line(folder / "corpus.jsonl", {"_id": "d-\u00e9\u6587", "title": "\u00c9t\u00e9", "text": UNICODE_TEXT})
    append_line(folder / "corpus.jsonl", {"_id": "big", "title": "", "text": big})
    append_line(folder / "queries.jsonl", {"_id": "q-\U0001F600", "text": UNICODE_TEXT})
    with open(folder / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("q-\U0001F600\td-\u00e9\u6587\t1\n")
    manifest = beir_data.prepare_beir("tiny", str(folder), tmp_path / "out")
    corpus, queries, qrels, dropped = beir_data.load_beir_folder(tmp_path / "out", "test")
    docs = {d["_id"]: d for d in corpus}
    assert docs["d-\u00e9\u6587"] == {"_id": "d-\u00e9\u6587", "title": "\u00c9t\u00e9", "text": UNICODE_TEXT}
    assert docs["big"]["text"] == big  # prepare keeps long documents whole: encode truncates them
    assert {"_id": "q-\U0001F600", "text": UNICODE_TEXT} in queries
    assert ("q-\U0001F600", "d-\u00e9\u6587", 1) in qrels and manifest["n_queries"] == 4 and dropped == 0
    beir_data.check_beir_dir(tmp_path / "out")


def test_windows_line_endings_are_read_like_unix_ones(tmp_path):
    folder = beir_copy(tmp_path)
    for rel in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        (folder / rel).write_bytes((folder / rel).read_bytes().replace(b"\n", b"\r\n"))
    crlf = beir_data.prepare_beir("tiny", str(folder), tmp_path / "crlf")
    lf = beir_data.prepare_beir("tiny", str(BEIR), tmp_path / "lf")
    written, expected = snapshot(tmp_path / "crlf"), snapshot(tmp_path / "lf")
    del written["manifest.json"], expected["manifest.json"]  # they name different sources
    assert written == expected and crlf["sha256"] == lf["sha256"]


def test_an_empty_document_is_kept_and_encoded_as_its_prefix(tmp_path, colbert):
    # FiQA's corpus has five documents with neither title nor text; PyLate encodes them as the prefix and
    # special tokens, and so does encode: refusing them would stop the study and change its numbers.
    folder = beir_copy(tmp_path)
    append_line(folder / "corpus.jsonl", {"_id": "d9", "title": "", "text": ""})
    beir_data.prepare_beir("tiny", str(folder), tmp_path / "out")
    corpus, _, _, _ = beir_data.load_beir_folder(tmp_path / "out", "test")
    ids, texts = encode_module.document_texts(corpus)
    encode_to_store(colbert, ids, texts, tmp_path / "docs", is_query=False, show_progress=False)
    store = open_store(tmp_path / "docs")
    empty = store.item(store.ids.index("d9")).astype(np.float32)
    np.testing.assert_allclose(empty, colbert.encode_document([""], convert_to_numpy=True)[0], atol=1e-3)


@pytest.mark.parametrize(
    ("source", "kwargs", "needle"),
    [
        ("builtin:other", {}, r"prepare.datasets.tiny: unknown builtin source 'builtin:other'"),
        ("builtin:python-docs", {"split": "dev"}, r"has only the split 'test', not 'dev'"),
        ("no/such/folder", {}, r"prepare.datasets.tiny.source='no/such/folder': no such folder"),
    ],
)
def test_bad_beir_source_is_named(tmp_path, source, kwargs, needle):
    with pytest.raises(InputError, match=needle):
        beir_data.prepare_beir("tiny", source, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_download_without_corpus_is_refused(tmp_path, beir_server):
    import zipfile

    served, _ = beir_server
    with zipfile.ZipFile(served / "odd.zip", "w") as zf:
        zf.writestr("odd/readme.txt", "not a BEIR dataset")
    with pytest.raises(InputError, match=r"odd.zip: the archive has no odd/corpus.jsonl"):
        beir_data.prepare_beir("odd", "odd", tmp_path / "out")
    assert not (tmp_path / "out").exists() and list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("no_manifest", r"manifest.json is missing: the folder was not written by the prepare stage"),
        ("file_gone", r"corpus.jsonl is listed in .*manifest.json but missing"),
        ("count", r"manifest says n_documents=99, the files hold 5"),
    ],
)
def test_check_beir_dir_refuses_a_damaged_prepared_folder(tmp_path, damage, needle):
    out = tmp_path / "out"
    beir_data.prepare_beir("tiny", str(BEIR), out)
    if damage == "no_manifest":
        (out / "manifest.json").unlink()
    elif damage == "file_gone":
        (out / "corpus.jsonl").unlink()
    else:
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["n_documents"] = 99
        (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=needle):
        beir_data.check_beir_dir(out)


def test_check_beir_dir_refuses_queries_without_qrels(tmp_path):
    out = tmp_path / "out"
    shutil.copytree(BEIR, out)  # q4 has no qrels: a raw folder, not one prepare wrote
    manifest = {"split": "test", "n_documents": 5, "n_queries": 3, "n_qrels": 4, "sha256": {}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"1 queries have no qrels; rerun the prepare stage"):
        beir_data.check_beir_dir(out)


# =============================================================================== prepare: KD sets


def kd_kwargs(**over):
    return {"revision": None, "max_samples": None, "seed": 0, "n_ways_min": 8, **over}


def kd_folder(tmp_path: Path, fmt: str = "jsonl", edit=None) -> Path:
    """The msmarco fixture as a local KD folder; ``edit(name, lines_or_rows)`` changes it first."""
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    for name, file in HUB_FILES.items():
        rows = pq.read_table(MSMARCO / file).to_pylist()
        if fmt == "jsonl":
            lines = [json.dumps(r) for r in rows]
            lines = edit(name, lines) if edit else lines
            (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            rows = edit(name, rows) if edit else rows
            pq.write_table(pa.Table.from_pylist(rows), folder / f"{name}.parquet")
    return folder


def _line(name_wanted, index, change):
    def edit(name, lines):
        if name == name_wanted:
            lines[index] = change(lines[index])
        return lines
    return edit


def _score(value):
    def change(line):
        row = json.loads(line)
        row["scores"][0] = value
        return json.dumps(row)  # json writes NaN / Infinity literals, which Python's reader accepts
    return change


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_line("train", 6, lambda s: s[:20]), r"train.jsonl:7: truncated or corrupt JSON"),
        (_line("train", 1, _score(float("nan"))), r"1 non-finite score\(s\) \(NaN/inf\), e.g. in query '501'"),
        (_line("train", 1, _score(float("-inf"))), r"1 non-finite score\(s\) \(NaN/inf\), e.g. in query '501'"),
        (_line("train", 1, _score("0.5")), r"train.jsonl: values of one column have mixed types"),
        (_line("train", 1, _score(None)), r"train.scores holds 1 null value\(s\) inside its lists"),
        (_line("train", 1, lambda s: s.replace('"document_ids": ["', '"document_ids": [null, "', 1)
         .replace('"scores": [', '"scores": [0.0, ', 1)), r"train.document_ids holds 1 null value\(s\) inside its lists"),
        (_line("queries", 0, lambda s: s.replace('"query_id"', '"qid"')), r"queries.jsonl:1: missing key\(s\) \['query_id'\]"),
        (_line("queries", 0, lambda s: s.replace('"text": "', '"text": "\\udce9', 1)), r"queries.jsonl:1: an unpaired surrogate"),
        (_line("documents", 0, lambda s: json.dumps({**json.loads(s), "text": ""})), r"documents have an empty text, e.g. document_id '1000'"),
        (lambda n, lines: lines + [lines[0]] if n == "documents" else lines, r"documents has 1 duplicate document_id\(s\), e.g. '1000'"),
        (lambda n, lines: lines[1:] if n == "queries" else lines, r"1 train query id\(s\) are not in queries, e.g. '500'"),
        (lambda n, lines: [] if n == "train" else lines, r"src: train has no rows"),
    ],
)
def test_malformed_kd_folder_is_refused_and_the_previous_output_kept(tmp_path, edit, needle):
    out = tmp_path / "kd"
    (tmp_path / "good").mkdir()
    kd.prepare_kd(str(kd_folder(tmp_path / "good")), out, **kd_kwargs())
    before = snapshot(out)
    with pytest.raises(InputError, match=needle):
        kd.prepare_kd(str(kd_folder(tmp_path, "jsonl", edit)), out, **kd_kwargs())
    assert snapshot(out) == before and no_temporaries(tmp_path)


def test_a_kd_set_without_training_rows_is_refused():
    tables = {name: pa.Table.from_pylist([], schema=kd.KD_SCHEMAS[name]) for name in kd.KD_SCHEMAS}
    with pytest.raises(InputError, match=r"KD set: train has no rows"):
        kd.validate_kd(tables)


def test_null_value_in_a_parquet_kd_file_is_named(tmp_path):
    def edit(name, rows):
        if name == "queries":
            rows[2]["text"] = None
        return rows

    with pytest.raises(InputError, match=r"queries.text has 1 null value\(s\)"):
        kd.prepare_kd(str(kd_folder(tmp_path, "parquet", edit)), tmp_path / "kd", **kd_kwargs())
    assert not (tmp_path / "kd").exists()


def test_unicode_kd_text_round_trips(tmp_path):
    def edit(name, lines):
        if name == "queries":
            row = json.loads(lines[0])
            row["text"] = UNICODE_TEXT
            lines[0] = json.dumps(row)
        return lines

    kd.prepare_kd(str(kd_folder(tmp_path, "jsonl", edit)), tmp_path / "kd", **kd_kwargs())
    texts = pq.read_table(tmp_path / "kd" / "queries.parquet")["text"].to_pylist()
    assert texts[0] == UNICODE_TEXT


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("missing", r"queries.parquet or queries.jsonl is missing"),
        ("both", r"both train.parquet and train.jsonl exist; keep one"),
        ("garbage", r"documents.parquet: not a readable parquet file"),
    ],
)
def test_bad_local_kd_files_are_named(tmp_path, setup, needle):
    folder = kd_folder(tmp_path, "parquet")
    if setup == "missing":
        (folder / "queries.parquet").unlink()
    elif setup == "both":
        (folder / "train.jsonl").write_text("")
    else:
        (folder / "documents.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=needle):
        kd.prepare_kd(str(folder), tmp_path / "kd", **kd_kwargs())
    assert not (tmp_path / "kd").exists()


@pytest.mark.parametrize(
    ("source", "kwargs", "needle"),
    [
        ("not-a-hub-id", {}, r"prepare.kd.source='not-a-hub-id' is neither an existing folder"),
        ("builtin:other", {}, r"unknown builtin source 'builtin:other'"),
    ],
)
def test_bad_kd_source_or_size_is_named(tmp_path, source, kwargs, needle):
    with pytest.raises(InputError, match=needle):
        kd.prepare_kd(source, tmp_path / "kd", **kd_kwargs(**kwargs))
    assert not (tmp_path / "kd").exists()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("file_gone", r"train.parquet is listed in .*manifest.json but missing"),
        ("not_listed_gone", r"queries.parquet is missing; rerun the prepare stage"),
        ("count", r"manifest says n_train=99, the files hold"),
        ("unreferenced", r"queries/documents hold rows no training row references"),
    ],
)
def test_check_kd_dir_refuses_a_damaged_prepared_folder(tmp_path, damage, needle):
    out = tmp_path / "kd"
    kd.prepare_kd(str(kd_folder(tmp_path)), out, **kd_kwargs())
    manifest = json.loads((out / "manifest.json").read_text())
    if damage == "file_gone":
        (out / "train.parquet").unlink()
    elif damage == "not_listed_gone":
        del manifest["sha256"]["queries.parquet"]
        (out / "queries.parquet").unlink()
    elif damage == "count":
        manifest["n_train"] = 99
    else:
        extra = pa.table({"query_id": ["extra"], "text": ["a query no row uses"]})
        pq.write_table(pa.concat_tables([pq.read_table(out / "queries.parquet"), extra]), out / "queries.parquet")
        manifest["sha256"]["queries.parquet"] = atomic.sha256_file(out / "queries.parquet")
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=needle):
        kd.check_kd_dir(out)


# ================================================================================ encode


@pytest.fixture(scope="module")
def colbert():
    from colbench.model import load_colbert

    return load_colbert(str(COLBERT), device="cpu")


def test_a_1mb_document_is_truncated_to_the_document_length_and_counted(tmp_path, colbert):
    big = "The wind tunnel measures drag on scale models. " * 22000  # about 1 MB
    assert len(big.encode()) > 1_000_000
    stats = encode_to_store(colbert, ["small", "big"], ["a short document", big], tmp_path / "docs",
                            is_query=False, dtype="float32", show_progress=False)
    store = open_store(tmp_path / "docs")
    assert stats["n_truncated"] == 1 and store.meta["n_truncated"] == 1
    assert store.meta["max_tokens"] == 180 and 0 < store.lengths[1] <= 180
    # Truncation keeps the beginning: the first few thousand characters encode to the same vectors.
    head = colbert.encode_document([big[:5000]], convert_to_numpy=True)[0]
    np.testing.assert_allclose(store.item(1), head, atol=1e-5, rtol=0)


def test_unicode_ids_and_text_round_trip_through_encode(tmp_path, colbert):
    ids = ["caf\u00e9-1", "\u6587\u6863", "emoji-\U0001F600", "rtl-\u05e9", "zero-width"]
    # The last text is a zero-width space: not whitespace, so not "empty"; it encodes to the special tokens.
    texts = [UNICODE_TEXT, "\u6587\u6863 text", "\U0001F600 \u200d", "\u05e9\u05dc\u05d5\u05dd world", "\u200b"]
    encode_to_store(colbert, ids, texts, tmp_path / "docs", is_query=False, dtype="float32", show_progress=False)
    store = open_store(tmp_path / "docs")
    assert store.ids == ids and (store.lengths > 0).all()
    for i, text in enumerate(texts):
        np.testing.assert_allclose(store.item(i), colbert.encode_document([text], convert_to_numpy=True)[0], atol=1e-5)


@pytest.mark.parametrize(
    ("ids", "texts", "kwargs", "needle"),
    [
        (["a", "b"], ["fine", float("nan")], {}, r"document 'b' has no text \(float\)"),  # pandas' missing value
        (["a", "b"], ["fine", None], {}, r"document 'b' has no text \(NoneType\)"),
        (["a", "b"], ["fine", "caf\udce9"], {}, r"document 'b' holds an unpaired surrogate"),
        (["a", "b", "a"], ["x", "y", "z"], {}, r"duplicate document ids \['a'\]"),
    ],
)
def test_bad_encode_input_is_refused_and_the_previous_store_kept(tmp_path, colbert, ids, texts, kwargs, needle):
    out = tmp_path / "docs"
    encode_to_store(colbert, ["p", "q"], ["previous", "store"], out, is_query=False, show_progress=False)
    before = snapshot(out)
    with pytest.raises(InputError, match=needle):
        encode_to_store(colbert, ids, texts, out, is_query=False, show_progress=False, **kwargs)
    assert snapshot(out) == before and not (tmp_path / "docs.shards").exists()


def _free(n_bytes):
    usage = namedtuple("usage", "total used free")
    return lambda path: usage(10 * n_bytes, 9 * n_bytes, n_bytes)


def test_too_little_free_disk_is_refused_before_encoding(tmp_path, colbert, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", _free(4096))
    calls = []
    monkeypatch.setattr(encode_module, "_encode_shard", lambda *a, **k: calls.append(1))
    out = tmp_path / "not" / "yet" / "docs"
    with pytest.raises(InputError, match=rf"encode: {out} needs up to .* GiB .* but {tmp_path} has 0.00 GiB free"):
        encode_to_store(colbert, ["a", "b"], ["one document", "two"], out, is_query=False, show_progress=False)
    assert calls == [] and list(tmp_path.iterdir()) == []  # nothing encoded, no shard folder, no store


@pytest.mark.parametrize("is_query", [False, True])
def test_free_disk_estimate_bounds_what_encode_writes(tmp_path, colbert, is_query):
    texts = ["tiny", "a medium sized text about wind tunnels and drag " * 3, "word " * 400, "\U0001F600" * 50]
    need = check_free_disk(colbert, texts, tmp_path / "s", is_query=is_query, dtype="float16")
    encode_to_store(colbert, list("abcd"), texts, tmp_path / "s", is_query=is_query, shard_size=2, show_progress=False)
    vectors = (tmp_path / "s" / "vectors.npy").stat().st_size
    dim = colbert.get_embedding_dimension()
    assert 2 * vectors <= need <= 2 * len(texts) * 180 * dim * 2 + 64 * len(texts)  # shards + store, <= the limit
    # Resumed with every shard written: only the assembled store is still to come.
    resumed = check_free_disk(colbert, texts, tmp_path / "s", is_query=is_query, dtype="float16", items=[])
    assert vectors <= resumed < need


# ================================================================================ index


def small_store(path: Path, dim: int = 8, lengths=(3, 2, 4), seed: int = 0) -> EmbeddingStore:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((sum(lengths), dim)).astype(np.float32)
    ids = [f"d{i}" for i in range(len(lengths))]
    write_store(path, ids, [(vecs, np.array(lengths))], total_tokens=len(vecs), dim=dim, meta={"model": {"sha256": "m"}})
    return open_store(path)


def test_a_store_without_token_vectors_is_not_indexed(tmp_path):
    empty = small_store(tmp_path / "s", lengths=(0, 0))
    with pytest.raises(InputError, match=r"no token vectors to index; rerun the encode stage"):
        build_index(empty, tmp_path / "i")
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("manifest_not_json", r"unreadable manifest.json"),
        ("voy_garbage", r"cannot load"),
        ("other_dimension", r"holds 9 vectors of dimension 4, the store 9 of 8"),
    ],
)
def test_a_damaged_index_is_refused_on_open(tmp_path, damage, needle):
    store = small_store(tmp_path / "s")
    build_index(store, tmp_path / "i")
    folder = tmp_path / "i"
    if damage == "manifest_not_json":
        (folder / "manifest.json").write_text("{ not json")
    elif damage == "voy_garbage":
        size = (folder / "tokens.voy").stat().st_size
        (folder / "tokens.voy").write_bytes(b"\0" * size)  # same size: only loading can tell
    else:
        # An index of another dimension behind a manifest that claims this store (hand-edited).
        build_index(small_store(tmp_path / "s4", dim=4), tmp_path / "i4")
        shutil.copy(tmp_path / "i4" / "tokens.voy", folder / "tokens.voy")
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"]["tokens.voy"] = (folder / "tokens.voy").stat().st_size
        (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=needle):
        open_index(folder, store)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"dtype": "bfloat16"}, r"dtype 'bfloat16' is not one of"),
        ({"dim": 0}, r"dim=0 and total_tokens=9 must be positive"),
    ],
)
def test_bad_store_settings_are_refused(tmp_path, kwargs, needle):
    vecs = np.zeros((9, 8), np.float32)
    settings = {"total_tokens": 9, "dim": 8, **kwargs}
    with pytest.raises(InputError, match=needle):
        write_store(tmp_path / "s", ["a", "b"], [(vecs, np.array([4, 5]))], **settings)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("lengths", "total", "needle"),
    [([4, 4], 9, r"chunk 0 lengths sum to 8 but it has 9 vectors"), ([4, 5], 5, r"chunks hold more than total_tokens=5")],
)
def test_inconsistent_store_chunks_are_refused(tmp_path, lengths, total, needle):
    with pytest.raises(InputError, match=needle):
        write_store(tmp_path / "s", ["a", "b"], [(np.zeros((9, 8), np.float32), np.array(lengths))],
                    total_tokens=total, dim=8)
    assert not (tmp_path / "s").exists()


# ================================================================================ evaluate


def test_queries_missing_from_qrels_or_run_are_counted_not_fatal():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    run = {"q1": {"d1": 2.0, "d2": 1.0}, "q3": {"d3": 1.0}}  # q2 has no result, q3 has no qrels
    aggregate, per_query = evaluate.evaluate_run(run, qrels, ignore_identical_ids=False)
    assert set(per_query) == {"q1", "q2"}
    assert per_query["q1"]["ndcg@10"] == 1.0 and per_query["q2"]["ndcg@10"] == 0.0
    assert aggregate["ndcg@10"] == 0.5 and aggregate["queries"] == 2
    assert aggregate["queries_without_results"] == 1 and aggregate["run_queries_without_qrels"] == 1


def test_unicode_ids_round_trip_through_the_run_file_and_evaluation(tmp_path):
    run = {"q-\u00e9": {"\u6587\u6863": 2.0, "d-\U0001F600": 1.0}}
    write_trec(run, tmp_path / "run.trec", tag="colbench")
    (tmp_path / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq-\u00e9\td-\U0001F600\t1\n", encoding="utf-8")
    aggregate, _ = evaluate.evaluate_run(read_trec(tmp_path / "run.trec"), evaluate.load_qrels(tmp_path / "test.tsv"),
                                         ignore_identical_ids=False)
    assert aggregate["mrr@10"] == 0.5


def test_a_nan_score_in_a_run_file_is_refused_naming_the_hit(tmp_path):
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 nan t\nq1 Q0 d2 2 0.5 t\n")
    with pytest.raises(InputError, match=r"query 'q1', document 'd1' has score nan"):
        evaluate.evaluate_run(read_trec(tmp_path / "run.trec"), {"q1": {"d1": 1}}, ignore_identical_ids=False)


@pytest.mark.parametrize(
    ("text", "needle"),
    [(None, r"qrels file .*test.tsv does not exist"), ("query-id\tcorpus-id\tscore\n\n", r"test.tsv has no judgements")],
)
def test_missing_or_empty_qrels_file_is_named(tmp_path, text, needle):
    if text is not None:
        (tmp_path / "test.tsv").write_text(text)
    with pytest.raises(InputError, match=needle):
        evaluate.load_qrels(tmp_path / "test.tsv")


def test_missing_run_file_and_bad_tag_are_named(tmp_path):
    with pytest.raises(InputError, match=r"run file .*none.trec does not exist; rerun the retrieve stage"):
        read_trec(tmp_path / "none.trec")
    with pytest.raises(InputError, match=r"TREC run tag 'my tag' must be a non-empty word"):
        write_trec({"q": {"d": 1.0}}, tmp_path / "run.trec", tag="my tag")
    assert not (tmp_path / "run.trec").exists()


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: evaluate.paired_bootstrap({}, metric="m"), r"no per-query values to bootstrap"),
    ],
)
def test_bad_evaluation_settings_are_named(call, needle):
    with pytest.raises(InputError, match=needle):
        call()


# ====================================================== params and the other stages (table coverage)


def _set(keys: str, value):
    def edit(raw):
        node = raw
        *parents, last = keys.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_set("prepare.kd.source", "builtin:python-docs"), r"prepare.kd.teacher is required with prepare.kd.source"),
        (_set("train.num_processes", 2), r"train.num_processes is 2 but train.distributed is none"),
        (_set("prepare.kd.max_samples", "all"), r"prepare.kd.max_samples must be a number, got 'all'"),
        (_set("evaluate.k_values", 10), r"evaluate.k_values must be a list, got 10"),
        (_set("report.reference_ndcg10", [39.86]), r"report.reference_ndcg10 must be a mapping"),
        (_set("retrieve.k", "many"), r"retrieve.k must be a number, got 'many'"),
        (_set("retrieve.k", [5]), r"retrieve.k must be a number, got \[5\]"),
        (_set("train.base_model", ""), r"train.base_model must be a non-empty string, got ''"),
        (_set("train.checkpoint", 5), r"train.checkpoint must be a non-empty string, got 5"),
    ],
)
def test_bad_params_are_named_by_key(edited_params, edit, needle):
    with pytest.raises(InputError, match=needle):
        load_params(edited_params(edit))


def test_params_that_are_not_yaml_are_named(tmp_path):
    (tmp_path / "params.yaml").write_text("base: {seed: 42\n")
    with pytest.raises(InputError, match=r"params.yaml: not valid YAML"):
        load_params(tmp_path / "params.yaml")


def _package(tmp_path, monkeypatch, name, body):
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return f"pkg:{name}"


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("   ", r"model name must be a non-empty string"),
        ("pkg:json", r"module 'json' has no get_model_path\(\); it does not ship a model"),
        ("pkg:colbench_fake_model", r"get_model_path\(\) returned '/no/such/folder', which is not a folder"),
    ],
)
def test_bad_model_source_is_named(tmp_path, monkeypatch, source, needle):
    _package(tmp_path, monkeypatch, "colbench_fake_model", "def get_model_path():\n    return '/no/such/folder'\n")
    with pytest.raises(InputError, match=needle):
        model_module.resolve_model_source(source)


def test_a_model_the_hub_cannot_serve_is_named(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def not_cached(*args, **kwargs):
        raise LocalEntryNotFoundError("not cached")

    def no_network(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    with pytest.raises(InputError, match=r"train.base_model 'org/model': not a local folder, not cached, and the hub "
                                         r"cannot serve it \(ConnectionError: no route to host\); download it"):
        hub.model_snapshot("org/model", "train.base_model")


def test_a_sentence_transformers_folder_without_transformer_is_refused(tmp_path):
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "x.Pooling"}]))
    with pytest.raises(InputError, match=r"modules.json lists no Transformer module"):
        model_module._transformer_folder(str(tmp_path))


@pytest.mark.parametrize(
    ("pointers", "needle"),
    [
        ({"a": {"checkpoint": "../b"}, "b": {"checkpoint": "../a"}}, r"checkpoint pointer loop: .*a -> .*b -> .*a"),
        ({"a": {"checkpoint": ""}}, r"checkpoint.json: 'checkpoint' must be a non-empty string"),
    ],
)
def test_bad_checkpoint_pointers_are_named(tmp_path, pointers, needle):
    for name, content in pointers.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.json").write_text(json.dumps(content))
    with pytest.raises(InputError, match=needle):
        model_module.load_colbert(str(tmp_path / "a"))


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"n_candidates": 50, "n_documents": 40, "n_eval_queries": 2, "n_train_queries": 2}, r"n_candidates \(50\) > n_documents \(40\)"),
        ({"stdlib_dir": "/no/such/stdlib"}, r"stdlib folder /no/such/stdlib not found: .* run it with a Python that has one"),
    ],
)
def test_bad_builtin_options_are_named(options, needle):
    with pytest.raises(InputError, match=needle):
        pydocs.stdlib_items(pydocs.PyDocsOptions.from_dict(options))


def test_a_missing_teacher_package_is_named():
    with pytest.raises(InputError, match=r"teacher 'pkg:colbench_no_such_teacher': package .* is not installed"):
        pydocs.load_teacher("pkg:colbench_no_such_teacher")


def test_report_inputs_are_named(tmp_path):
    with pytest.raises(InputError, match=r"metrics of dataset 'fiqa' have no 'ndcg@10'"):
        report.study_table({"fiqa": {"recall@100": 0.5}}, {"fiqa": {"q": {"recall@100": 0.5}}}, {"fiqa": 39.86})
    with pytest.raises(InputError, match=r"costs folder .*costs does not exist"):
        report.costs_table(tmp_path / "costs")
    with pytest.raises(InputError, match=r"no trade-off points to plot"):
        figures.plot_tradeoff([], tmp_path / "tradeoff.png")
    assert list(tmp_path.iterdir()) == []


def _fake_dvc(tmp_path: Path, script: str) -> str:
    exe = tmp_path / "fake-dvc"
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


@pytest.mark.parametrize(
    ("script", "needle"),
    [
        ("echo 'ERROR: broken' >&2; exit 1", r"exp show --json` failed in .*ERROR: broken"),
        ("echo '[not json'", r"`dvc exp show --json` printed no JSON"),
    ],
)
def test_failing_dvc_is_named(tmp_path, script, needle):
    (tmp_path / ".dvc").mkdir()
    with pytest.raises(InputError, match=needle):
        experiments.load_experiments(tmp_path, dvc_exe=_fake_dvc(tmp_path, script))


def test_missing_dvc_or_repository_or_experiments_are_named(tmp_path):
    (tmp_path / "repo" / ".dvc").mkdir(parents=True)
    with pytest.raises(InputError, match=r"DVC executable 'colbench-no-such-dvc' not found"):
        experiments.load_experiments(tmp_path / "repo", dvc_exe="colbench-no-such-dvc")
    with pytest.raises(InputError, match=r"is not inside a DVC repository"):
        experiments._dvc_root(tmp_path)
    with pytest.raises(InputError, match=r"`dvc exp show` found nothing in here"):
        experiments.experiments_table([], where="here")


def test_train_inputs_are_named_before_any_training(tmp_path):
    folder = tmp_path / "kd"
    shutil.copytree(KD_TINY, folder)
    pq.write_table(pq.read_table(folder / "queries.parquet").rename_columns(["qid", "text"]), folder / "queries.parquet")
    with pytest.raises(InputError, match=r"queries has columns \['qid', 'text'\]; expected \['query_id', 'text'\]"):
        kd.load_kd_dataset(folder, n_ways=4)
    shutil.copy(KD_TINY / "queries.parquet", folder / "queries.parquet")
    pq.write_table(pq.read_table(KD_TINY / "train.parquet").slice(0, 0), folder / "train.parquet")
    with pytest.raises(InputError, match=r"prepared KD folder .*: train has no rows"):
        kd.load_kd_dataset(folder, n_ways=4)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda p: train._load_factory("colbench.heldout"), r"--evaluator-factory 'colbench.heldout': use module:function"),
        (lambda p: train.main(["--seed", "1"]), r"colbench.train: missing settings \['kd_dir'"),
    ],
)
def test_bad_train_settings_are_named(tmp_path, call, needle):
    with pytest.raises(InputError, match=needle):
        call(tmp_path)
    assert list(tmp_path.iterdir()) == []
