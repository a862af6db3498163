"""BEIR-format test collections: load and validate a folder, prepare one for the pipeline, check it again.

A collection folder (BEIR's format, also what the prepare stage writes):
  ``corpus.jsonl`` (_id, title, text), ``queries.jsonl`` (_id, text; the prepare stage keeps only queries
  with qrels in the split), ``qrels/<split>.tsv`` (header query-id, corpus-id, score), and, once prepared,
  ``manifest.json`` (source, split, counts, n_queries_dropped_without_qrels, sha256, url when downloaded, and
  ``qrels_to_missing_documents`` when some qrels judge a document the corpus lacks: see `missing_documents`).

Everything is checked before anything is written; every problem raises :class:`InputError` naming the
file (and line), the id and what to do: bad lines, duplicate ids, qrels of unknown queries, more than a few
qrels of unknown documents, a missing qrels header (beir's own loader checks none of these; the datasets are
downloaded by `colbench.hub`).
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from colbench import hub, pydocs
from colbench.atomic import atomic_dir, verify_manifest, write_manifest
from colbench.errors import InputError

QRELS_HEADER = ["query-id", "corpus-id", "score"]


def read_jsonl(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) of a JSON-lines file; bad bytes, bad JSON or missing keys raise InputError.

    Hand-written rather than ``pyarrow.json``/``datasets`` because those do not say which line is bad.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{number}: not UTF-8 ({err.reason} at byte {err.start}); re-encode the file") from err
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: truncated or corrupt JSON ({err.msg}); fix or re-download it") from err
            if not isinstance(record, dict):
                raise InputError(f"{path}:{number}: expected a JSON object, found {type(record).__name__}")
            if "\\ud" in line.lower():
                # A \\udXXX escape can decode to a lone surrogate: valid JSON, but not text that can be
                # written back as UTF-8 (the write would fail with a bare UnicodeEncodeError).
                try:
                    json.dumps(record, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError as err:
                    raise InputError(f"{path}:{number}: an unpaired surrogate escape ({err.object[err.start]!r}) "
                                     "is not valid Unicode text; fix the escape in the file") from err
            missing = [key for key in required if key not in record]
            if missing:
                raise InputError(f"{path}:{number}: missing key(s) {missing}; expected {list(required)}, found {sorted(record)}")
            yield number, record


def prepare_beir(
    name: str,
    source: str,
    out_dir: str | Path,
    *,
    split: str = "test",
    seed: int = 42,
    builtin_options: dict | None = None,
) -> dict:
    """Validate one evaluation set and write it to ``out_dir`` in BEIR format; returns the manifest.

    ``source``: a BEIR dataset name (downloaded once into `colbench.hub.beir_cache_dir`), a local BEIR folder, or
    ``builtin:python-docs`` (needs the ``seed`` and ``builtin_options`` given to `colbench.kd.prepare_kd` to get the
    same corpus; its evaluation queries are disjoint from the KD training queries).
    """
    extra: dict[str, Any] = {}
    if source.startswith("builtin:"):
        if source != pydocs.SOURCE:
            raise InputError(f"prepare.datasets.{name}: unknown builtin source {source!r}; use {pydocs.SOURCE}")
        if split != "test":
            raise InputError(f"prepare.datasets.{name}: {pydocs.SOURCE} has only the split 'test', not {split!r}")
        options = pydocs.PyDocsOptions.from_dict(builtin_options)
        corpus, queries, qrels = pydocs.beir_records(pydocs.build_collection(seed, options))
        dropped = 0
        extra.update(seed=seed, builtin_options={k: v for k, v in vars(options).items() if k != "stdlib_dir"},
                     python_version=sys.version.split()[0])
    else:
        if Path(source).is_dir():
            folder = Path(source)
        elif re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", source):
            folder, extra["url"] = hub.download_beir(source)
        else:
            raise InputError(f"prepare.datasets.{name}.source={source!r}: no such folder, and not a BEIR dataset name")
        corpus, queries, qrels, dropped = load_beir_folder(folder, split)
    absent = missing_documents(qrels, {doc["_id"] for doc in corpus})
    if absent:
        extra["qrels_to_missing_documents"] = [list(row) for row in absent]
        warnings.warn(f"prepare.datasets.{name}: {len(absent)} of {len(qrels)} qrels judge documents the corpus "
                      f"lacks ({', '.join(repr(row[1]) for row in absent[:3])}); kept, as BEIR keeps them: no run can "
                      "return them (see manifest.json, qrels_to_missing_documents)", stacklevel=2)
    manifest = {
        "name": name,
        "source": source,
        "split": split,
        "n_documents": len(corpus),
        "n_queries": len(queries),
        "n_qrels": len(qrels),
        "n_queries_dropped_without_qrels": dropped,
        **extra,
    }
    with atomic_dir(out_dir) as tmp:
        _write_beir(tmp, split, corpus, queries, qrels)
        manifest = write_manifest(tmp, manifest)
    return manifest


def load_beir_folder(folder: str | Path, split: str) -> tuple[list[dict], list[dict], list[tuple[str, str, int]], int]:
    """Check a BEIR folder and load it: (corpus, queries with qrels, qrels rows, queries dropped).

    Reads the files itself rather than through beir's GenericDataLoader: the checks below need every line
    parsed anyway (bad lines, duplicate ids, qrels of unknown ids, with file and line in the message), and beir's
    loader would parse them a second time, with progress bars in the notebooks. The result is what beir's
    loader gives: corpus and queries in file order, a query kept only if it has a qrel in ``split``, qrels as
    in the tsv (a repeated pair once).
    """
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    missing = [p.name for p in (folder / "corpus.jsonl", folder / "queries.jsonl") if not p.is_file()]
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        missing.append(f"qrels/{split}.tsv (splits here: {have or 'none'})")
    if missing:
        raise InputError(f"BEIR folder {folder}: missing {', '.join(missing)}")
    documents = _scan_records(folder / "corpus.jsonl", ("_id", "text"))
    queries = _scan_records(folder / "queries.jsonl", ("_id", "text"))
    if not documents:
        raise InputError(f"{folder / 'corpus.jsonl'} is empty: a collection needs documents")
    rows = list(dict.fromkeys(_scan_qrels(qrels_path)))
    unknown = [row[0] for row in rows if row[0] not in queries]
    if unknown:
        raise InputError(f"{qrels_path}: {len(unknown)} qrel(s) reference queries not in the folder, e.g. "
                         f"{unknown[0]!r}; fix the qrels or the queries file")
    absent = missing_documents(rows, documents)
    if len(absent) > max(1, len(rows) // 100):
        raise InputError(f"{qrels_path}: {len(absent)} of {len(rows)} qrels reference documents not in the folder, "
                         f"e.g. {absent[0][1]!r}: the qrels and the corpus do not belong together; fix the qrels or the "
                         "corpus file. (One, or up to 1 % of the qrels, are kept as BEIR keeps them: ArguAna's test "
                         "qrels name one document its corpus lacks.)")
    corpus = [{"_id": i, "title": r.get("title") or "", "text": r.get("text") or ""} for i, r in documents.items()]
    judged = {row[0] for row in rows}
    kept = [{"_id": q, "text": r.get("text") or ""} for q, r in queries.items() if q in judged]
    blank = [q["_id"] for q in kept if not q["text"].strip()]
    if blank:
        raise InputError(f"{folder / 'queries.jsonl'}: {len(blank)} judged quer(ies) have an empty text, e.g. "
                         f"{blank[0]!r}; give them text or remove them and their qrels")
    return corpus, kept, rows, len(queries) - len(kept)


def missing_documents(qrels: list[tuple[str, str, int]], documents) -> list[tuple[str, str, int]]:
    """The qrels whose document is not among ``documents`` (ids).

    Kept, as BEIR's loader and PyLate's evaluation keep them: a judged document no run can return, which lowers
    its query's recall and NDCG for every model alike (ArguAna's test split has one, beir-cellar/beir#101).
    `load_beir_folder` refuses more than one that are also more than 1 % of the qrels: then corpus and qrels do not
    belong together.
    """
    return [row for row in qrels if row[1] not in documents]


def _scan_records(path: Path, required: tuple[str, ...]) -> dict[str, dict]:
    """The records of a corpus or queries file by id, in file order, each id checked."""
    records: dict[str, dict] = {}
    seen: dict[str, int] = {}
    for number, record in read_jsonl(path, required):
        value = record["_id"]
        if not isinstance(value, str) or not value:
            raise InputError(f"{path}:{number}: _id must be a non-empty string, found {value!r}")
        if any(c.isspace() for c in value):
            # A TREC run file is whitespace-separated: such an id would only fail at the retrieve stage.
            raise InputError(f"{path}:{number}: _id {value!r} contains whitespace, which TREC run files cannot hold; "
                             "rename it (and its qrels)")
        if value in seen:
            raise InputError(f"{path}:{number}: duplicate _id {value!r} (first on line {seen[value]}); ids must be unique")
        for key in ("title", "text"):
            if record.get(key) is not None and not isinstance(record[key], str):
                raise InputError(f"{path}:{number}: {key} of {value!r} is {type(record[key]).__name__}, expected a string")
        seen[value] = number
        records[value] = record
    return records


def _scan_qrels(path: Path) -> list[tuple[str, str, int]]:
    rows: list[tuple[str, str, int]] = []
    scores: dict[tuple[str, str], int] = {}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{number}: not UTF-8 ({err.reason}); re-encode the file") from err
            fields = line.split("\t")
            if number == 1:
                # beir skips the first line unread: without the header the first qrel would be lost.
                if fields != QRELS_HEADER:
                    header = "<TAB>".join(QRELS_HEADER)
                    raise InputError(f"{path}:1: expected the header {header!r}, found {line!r}")
                continue
            if not line.strip():
                continue
            if len(fields) != 3 or not re.fullmatch(r"-?\d+", fields[2]):
                raise InputError(f"{path}:{number}: expected query-id<TAB>corpus-id<TAB>integer score, found {line!r}")
            key, score = (fields[0], fields[1]), int(fields[2])
            if scores.setdefault(key, score) != score:
                raise InputError(f"{path}:{number}: qrel {key} repeated with a different score ({scores[key]} vs {score})")
            rows.append((fields[0], fields[1], score))
    if not rows:
        raise InputError(f"{path}: no qrels; the split has nothing to evaluate")
    return rows


def _write_beir(folder: Path, split: str, corpus, queries, qrels) -> None:
    def dump(path: Path, records) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    dump(folder / "corpus.jsonl", corpus)
    dump(folder / "queries.jsonl", queries)
    (folder / "qrels").mkdir()
    with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="") as handle:
        handle.write("\t".join(QRELS_HEADER) + "\n")
        for query_id, doc_id, score in qrels:
            handle.write(f"{query_id}\t{doc_id}\t{score}\n")


def check_beir_dir(path: str | Path) -> dict:
    """Re-check a written evaluation folder (checksums, format, references, counts); returns its manifest."""
    folder = Path(path)
    manifest = verify_manifest(folder)
    corpus, queries, qrels, dropped = load_beir_folder(folder, manifest.get("split", "test"))
    counts = {"n_documents": len(corpus), "n_queries": len(queries), "n_qrels": len(qrels)}
    for key, value in counts.items():
        if manifest.get(key) != value:
            raise InputError(f"{folder}: manifest says {key}={manifest.get(key)}, the files hold {value}; rerun prepare")
    if dropped:
        raise InputError(f"{folder}: {dropped} queries have no qrels; rerun the prepare stage")
    return manifest
