"""The distillation (KD) set: teacher scores per query over candidate documents, in the schema of
``lightonai/ms-marco-en-bge``: prepared (validated, written) by the prepare stage, read by the train stage.

Prepared folder:
  ``train.parquet``     query_id: string, document_ids: list<string>, scores: list<double> (stored order kept)
  ``queries.parquet``   query_id: string, text: string   (only queries of the kept training rows)
  ``documents.parquet`` document_id: string, text: string (only documents those rows reference)
  ``manifest.json``     source, revision, n_train, n_queries, n_documents, sha256 {file: hex}, ...

Sources: a hub dataset id (configs train/queries/documents), a local folder with the same three tables as
.parquet or .jsonl, or ``builtin:python-docs`` (the demo, :mod:`colbench.pydocs`). One set of checks
(`check_kd`) runs when the set is prepared and again when training reads it.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from colbench import hub, pydocs
from colbench.atomic import atomic_dir, read_json, verify_manifest, write_manifest
from colbench.beir_data import read_jsonl
from colbench.errors import InputError

KD_COLUMNS = {
    "train": ("query_id", "document_ids", "scores"),
    "queries": ("query_id", "text"),
    "documents": ("document_id", "text"),
}

# The written schema: the hub's, with scores widened to float64 (the contract of the train stage).
KD_SCHEMAS = {
    "train": pa.schema([("query_id", pa.string()), ("document_ids", pa.list_(pa.string())),
                        ("scores", pa.list_(pa.float64()))]),
    "queries": pa.schema([("query_id", pa.string()), ("text", pa.string())]),
    "documents": pa.schema([("document_id", pa.string()), ("text", pa.string())]),
}
KD_FILES = ("train.parquet", "queries.parquet", "documents.parquet")


def prepare_kd(
    source: str,
    out_dir: str | Path,
    *,
    revision: str | None,
    max_samples: int | None,
    seed: int,
    n_ways_min: int,
    teacher: str | None = None,
    builtin_options: dict | None = None,
) -> dict:
    """Validate a KD set and write it to ``out_dir``; returns the manifest.

    ``source``: a hub dataset id (configs train/queries/documents, split ``train``, at ``revision``), a local
    folder with ``train``/``queries``/``documents`` as .parquet or .jsonl, or ``builtin:python-docs``
    (built with ``seed``, ``teacher`` and ``builtin_options``, see :mod:`colbench.pydocs`; ``revision`` is
    ignored there). ``max_samples`` keeps the first N training rows as stored; every kept row needs at
    least ``n_ways_min`` candidates.
    """
    extra: dict[str, Any] = {}
    if source.startswith("builtin:"):
        tables = _builtin_kd(source, seed, n_ways_min, teacher, builtin_options, extra)
        revision = None
    elif Path(source).is_dir():
        tables = _local_kd(Path(source))
        revision = None
    elif "/" in source and not source.startswith((".", "/")) and source.count("/") == 1:
        tables, revision = _hub_kd(source, revision)
    else:
        raise InputError(
            f"prepare.kd.source={source!r} is neither an existing folder, a hub dataset id (owner/name) "
            "nor builtin:python-docs"
        )
    train, queries, documents = validate_kd(tables, n_ways_min=n_ways_min, max_samples=max_samples, where=source)
    manifest = {
        "source": source,
        "revision": revision,
        "max_samples": max_samples,
        "n_ways_min": n_ways_min,
        "n_train": train.num_rows,
        "n_queries": queries.num_rows,
        "n_documents": documents.num_rows,
        **extra,
    }
    with atomic_dir(out_dir) as tmp:
        for name, table in (("train", train), ("queries", queries), ("documents", documents)):
            pq.write_table(table, tmp / f"{name}.parquet")
        manifest = write_manifest(tmp, manifest)
    return manifest


def _builtin_kd(source, seed, n_ways_min, teacher, builtin_options, extra) -> dict[str, pa.Table]:
    if source != pydocs.SOURCE:
        raise InputError(f"unknown builtin source {source!r}; the one builtin is {pydocs.SOURCE}")
    options = pydocs.PyDocsOptions.from_dict(builtin_options)
    if options.n_candidates < n_ways_min:
        raise InputError(
            f"builtin:python-docs gives {options.n_candidates} candidates per query but n_ways is {n_ways_min}: "
            "raise the builtin option n_candidates or lower train.loss.n_ways"
        )
    teacher = teacher or pydocs.DEFAULT_TEACHER
    collection = pydocs.build_collection(seed, options)
    train, queries, documents = pydocs.kd_tables(collection, teacher, options.n_candidates, options.teacher_max_tokens, seed)
    extra.update(
        teacher=teacher,
        seed=seed,
        builtin_options={k: v for k, v in vars(options).items() if k != "stdlib_dir"},
        python_version=sys.version.split()[0],  # the stdlib's docstrings are the text
    )
    return {"train": pa.table(train), "queries": pa.table(queries), "documents": pa.table(documents)}


def _local_kd(folder: Path) -> dict[str, pa.Table]:
    tables = {}
    for name, columns in KD_COLUMNS.items():
        found = [folder / f"{name}{ext}" for ext in (".parquet", ".jsonl") if (folder / f"{name}{ext}").is_file()]
        if not found:
            raise InputError(f"{folder}: {name}.parquet or {name}.jsonl is missing (expected train, queries, documents)")
        if len(found) > 1:
            raise InputError(f"{folder}: both {found[0].name} and {found[1].name} exist; keep one")
        path = found[0]
        if path.suffix == ".parquet":
            try:
                tables[name] = pq.read_table(path)
            except (pa.ArrowException, OSError) as err:
                raise InputError(f"{path}: not a readable parquet file ({err}); rewrite it") from err
        else:
            records = [record for _, record in read_jsonl(path, columns)]
            try:
                tables[name] = pa.Table.from_pylist([{c: r[c] for c in columns} for r in records])
            except (pa.ArrowException, TypeError) as err:
                raise InputError(f"{path}: values of one column have mixed types ({err})") from err
            if not records:  # typed as the prepared set's, so that the check says "no rows", not a wrong type
                tables[name] = KD_SCHEMAS[name].empty_table()
    return tables


def _hub_kd(source: str, revision: str | None) -> tuple[dict[str, pa.Table], str | None]:
    import datasets

    offline = hub.hub_out_of_reach()
    snapshot = hub.cached_snapshot(source, "dataset", revision) if offline else None  # `hf download`'s copy, if any
    tables, hashes = {}, set()
    for config in KD_COLUMNS:
        try:
            # Without the network the libraries retry for ~25 s per file: we check once and go offline.
            with hub.offline_mode(offline):
                if snapshot:
                    dataset = datasets.load_dataset(str(snapshot), config, split="train")
                else:
                    dataset = datasets.load_dataset(source, config, split="train", revision=revision)
        except (ConnectionError, FileNotFoundError, OSError, ValueError) as err:
            where = (f" from its copy in the Hugging Face cache, {snapshot} (damaged? download it again)" if snapshot
                     else " offline and it is not in the Hugging Face cache" if offline else "")
            raise InputError(
                f"cannot load hub dataset {source!r} (config {config!r}, revision {revision or 'latest'}){where}: {err}. "
                f"Pre-populate the cache with `hf download --repo-type dataset {source}"
                f"{' --revision ' + revision if revision else ''}` on a machine with internet (and copy "
                "~/.cache/huggingface here), or point prepare.kd.source at a local folder holding "
                "train/queries/documents as .parquet or .jsonl"
            ) from err
        tables[config] = dataset.data.table
        hashes.update({snapshot.name} if snapshot else _commit_of(dataset))
    # The datasets cache keeps hub datasets under <config>/<version>/<commit sha>/, the hub cache its snapshots
    # under snapshots/<commit sha>/: that sha is the revision.
    resolved = hashes.pop() if len(hashes) == 1 else None
    if revision and resolved and len(revision) == 40 and resolved != revision:
        raise InputError(
            f"hub dataset {source!r}: revision {revision} was asked for but the cache holds {resolved}; "
            f"download the right one (`hf download --repo-type dataset {source} --revision {revision}`) "
            "or set prepare.kd.revision"
        )
    return tables, resolved or revision


def _commit_of(dataset) -> set[str]:
    found = set()
    for entry in dataset.cache_files:
        found.update(part for part in Path(entry["filename"]).parts if re.fullmatch(r"[0-9a-f]{40}", part))
    return found


def _example(values: pa.Array | pa.ChunkedArray, mask) -> str:
    return repr(pc.filter(values, mask)[0].as_py())


def validate_kd(
    tables: dict[str, pa.Table], *, n_ways_min: int = 1, max_samples: int | None = None, where: str = "KD set"
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Check a KD set (`check_kd`) and return (train, queries, documents) as written: first ``max_samples``
    rows, scores as float64, only referenced queries/documents (in their stored order), no extra columns."""
    if max_samples is not None:
        tables = {**tables, "train": tables["train"].slice(0, max_samples)}
    referenced = check_kd(tables, n_ways_min=n_ways_min, where=where)
    train = tables["train"].select(list(KD_COLUMNS["train"]))
    queries = tables["queries"].select(list(KD_COLUMNS["queries"]))
    documents = tables["documents"].select(list(KD_COLUMNS["documents"]))
    queries = queries.filter(pc.is_in(queries["query_id"], value_set=train["query_id"].combine_chunks()))
    documents = documents.filter(pc.is_in(documents["document_id"], value_set=referenced))
    # Not combine_chunks(): the full study's document texts (~3 GB) overflow one string array's offsets.
    return (train.cast(KD_SCHEMAS["train"]), queries.cast(KD_SCHEMAS["queries"]),
            documents.cast(KD_SCHEMAS["documents"]))


def check_kd(tables: dict[str, pa.Table], *, n_ways_min: int = 1, where: str = "KD set") -> pa.Array:
    """Raise `InputError` for anything in a KD set that would break or silently skew distillation.

    The one set of KD checks, used by the prepare stage on the raw set and by the train stage
    (`load_kd_dataset`) on the prepared folder: columns and types, no nulls, unique ids,
    as many scores as document_ids, at least ``n_ways_min`` candidates per row, finite scores (all of
    them, not only the first n_ways), every query and document id resolving to a non-blank text.
    ``tables`` maps train/queries/documents to tables (extra columns ignored); ``where`` opens every
    message. Copies nothing large (a memory-mapped 3 GB documents table stays mapped); returns the
    unique document ids train references. Vectorised: 808k rows x 32 ids take a few seconds.
    """
    for name, columns in KD_COLUMNS.items():
        found = tables[name].column_names
        if any(c not in found for c in columns):
            raise InputError(f"{where}: {name} has columns {found}; expected {list(columns)}")
    train = tables["train"].select(list(KD_COLUMNS["train"]))
    queries = tables["queries"].select(list(KD_COLUMNS["queries"]))
    documents = tables["documents"].select(list(KD_COLUMNS["documents"]))
    _check_types(where, train, queries, documents)
    if train.num_rows == 0:
        raise InputError(f"{where}: train has no rows")
    for name, table, key in (("train", train, "query_id"), ("queries", queries, "query_id"),
                             ("documents", documents, "document_id")):
        for column in table.column_names:
            nulls = table[column].null_count
            if nulls:
                raise InputError(f"{where}: {name}.{column} has {nulls} null value(s); every row needs one")
        ids = table[key]
        if pc.count_distinct(ids).as_py() != len(ids):
            counts = pc.value_counts(ids)
            dup = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
            raise InputError(f"{where}: {name} has {len(dup)} duplicate {key}(s), e.g. {dup[0].as_py()!r}; ids must be unique")

    for column in ("document_ids", "scores"):  # nulls inside the lists (pandas writes NaN as null in JSON)
        inner = pc.list_flatten(train[column]).null_count
        if inner:
            raise InputError(f"{where}: train.{column} holds {inner} null value(s) inside its lists; every "
                             "candidate needs an id and a score: fix or drop those rows")
    qids = train["query_id"]
    n_docs = pc.list_value_length(train["document_ids"])
    n_scores = pc.list_value_length(train["scores"])
    bad = pc.not_equal(n_docs, n_scores)
    if pc.any(bad).as_py():
        raise InputError(f"{where}: {pc.sum(bad).as_py()} train row(s) have a different number of scores and "
                         f"document_ids, e.g. query {_example(qids, bad)}; fix or drop those rows")
    short = pc.less(n_docs, n_ways_min)
    if pc.any(short).as_py():
        raise InputError(
            f"{where}: {pc.sum(short).as_py()} train row(s) have fewer than n_ways={n_ways_min} candidates, e.g. "
            f"query {_example(qids, short)}; lower train.loss.n_ways, drop those rows, or give each query more "
            "candidates (the builtin demo set: prepare.kd.builtin.n_candidates)"
        )
    scores = pc.list_flatten(train["scores"]).cast(pa.float64())
    not_finite = pc.invert(pc.is_finite(scores))
    if pc.any(not_finite).as_py():
        rows = pc.list_parent_indices(train["scores"])
        row = pc.filter(rows, not_finite)[0].as_py()
        raise InputError(f"{where}: {pc.sum(not_finite).as_py()} non-finite score(s) (NaN/inf), e.g. in query "
                         f"{qids[row].as_py()!r}; fix the teacher scores")

    missing_q = pc.invert(pc.is_in(qids, value_set=queries["query_id"].combine_chunks()))
    if pc.any(missing_q).as_py():
        raise InputError(f"{where}: {pc.sum(missing_q).as_py()} train query id(s) are not in queries, e.g. "
                         f"{_example(qids, missing_q)}; add their texts or drop those rows")
    referenced = pc.unique(pc.list_flatten(train["document_ids"]))
    missing_d = pc.invert(pc.is_in(referenced, value_set=documents["document_id"].combine_chunks()))
    if pc.any(missing_d).as_py():
        raise InputError(f"{where}: {pc.sum(missing_d).as_py()} document id(s) referenced by train are not in "
                         f"documents, e.g. {_example(referenced, missing_d)}; add their texts or drop those rows")
    used = {"queries": qids.combine_chunks(), "documents": referenced}
    for name, table, key in (("queries", queries, "query_id"), ("documents", documents, "document_id")):
        # Blank = empty or only whitespace; boolean kernels rather than a trimmed copy of every text.
        text = table["text"]
        blank = pc.or_(pc.equal(pc.utf8_length(text), 0), pc.utf8_is_space(text))
        empty = pc.and_(blank, pc.is_in(table[key], value_set=used[name]))
        if pc.any(empty).as_py():
            raise InputError(f"{where}: {pc.sum(empty).as_py()} {name} have an empty text, e.g. {key} "
                             f"{_example(table[key], empty)}; fix or drop them")
    return referenced


def _check_types(where: str, train: pa.Table, queries: pa.Table, documents: pa.Table) -> None:
    def is_str(t):
        return pa.types.is_string(t) or pa.types.is_large_string(t)

    def is_list(t, inner):
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and inner(t.value_type)

    checks = [
        ("train", "query_id", train, is_str, "string"),
        ("train", "document_ids", train, lambda t: is_list(t, is_str), "list of strings"),
        ("train", "scores", train, lambda t: is_list(t, lambda v: pa.types.is_floating(v) or pa.types.is_integer(v)),
         "list of numbers"),
        ("queries", "query_id", queries, is_str, "string"),
        ("queries", "text", queries, is_str, "string"),
        ("documents", "document_id", documents, is_str, "string"),
        ("documents", "text", documents, is_str, "string"),
    ]
    for name, column, table, ok, expected in checks:
        kind = table.schema.field(column).type
        if not ok(kind):
            raise InputError(f"{where}: {name}.{column} is {kind}, expected {expected} (ids must be strings)")


def prepare_nothing(out_dir: str | Path, *, reason: str) -> dict:
    """Write a KD folder that holds no set, only a manifest saying why (``skipped``): evaluating an existing
    checkpoint trains nothing, so the distillation set is neither downloaded nor prepared; the stage's
    declared output still exists. Returns the manifest."""
    with atomic_dir(out_dir) as tmp:
        return write_manifest(tmp, {"source": None, "skipped": reason, "n_train": 0, "n_queries": 0, "n_documents": 0})


def preview(folder: str | Path, n: int = 3):
    """The first ``n`` training rows of a prepared KD folder with their query text and candidate count, as a
    DataFrame (empty for a folder `prepare_nothing` wrote)."""
    import pandas as pd

    folder = Path(folder)
    if not (folder / "train.parquet").is_file():
        return pd.DataFrame(columns=["query_id", "document_ids", "scores", "query", "n_candidates"])
    rows = next(pq.ParquetFile(folder / "train.parquet").iter_batches(batch_size=n)).to_pandas()  # not 808k rows
    wanted = pq.read_table(folder / "queries.parquet", filters=[("query_id", "in", list(rows.query_id))])
    queries = wanted.to_pandas().set_index("query_id")["text"]
    return rows.assign(query=rows.query_id.map(queries), n_candidates=rows.document_ids.map(len))


def check_kd_dir(path: str | Path, *, n_ways_min: int = 1) -> dict:
    """Re-check a written KD folder (checksums, schema, references, counts); returns its manifest."""
    folder = Path(path)
    manifest = verify_manifest(folder)
    if manifest.get("skipped"):
        return manifest
    tables = {}
    for name in KD_COLUMNS:
        file = folder / f"{name}.parquet"
        if not file.is_file():
            raise InputError(f"{file} is missing; rerun the prepare stage")
        tables[name] = pq.read_table(file)
    train, queries, documents = validate_kd(tables, n_ways_min=n_ways_min, where=str(folder))
    counts = {"n_train": train.num_rows, "n_queries": queries.num_rows, "n_documents": documents.num_rows}
    for key, value in counts.items():
        if manifest.get(key) != value:
            raise InputError(f"{folder}: manifest says {key}={manifest.get(key)}, the files hold {value}; rerun prepare")
    if tables["queries"].num_rows != queries.num_rows or tables["documents"].num_rows != documents.num_rows:
        raise InputError(f"{folder}: queries/documents hold rows no training row references; rerun prepare")
    return manifest


def _read_table(folder: Path, name: str):
    from datasets import Dataset

    path = folder / name
    if not path.is_file():
        raise InputError(f"{path}: missing; a prepared KD folder holds {', '.join(KD_FILES)} (run the prepare stage).")
    # In memory (the study's documents take about 3 GB), not `Dataset.from_parquet`: that converts the file into an
    # uncompressed Arrow copy in the datasets cache, kept for good and made anew for every path and modification
    # time (each new prepare, each `dvc exp run --temp`): about 4 GB of disk each time at the study's size.
    # With a fingerprint of its own: without one, datasets hashes the whole table, pickled as one array per column,
    # which at the study's size fails (3 GB of document text overflow a string array's offsets;
    # bench/prepare_cpu.py found it). Nothing is cached under this fingerprint (the texts are joined per batch
    # by a transform, never by `map`), so the file's identity is enough.
    return Dataset(pq.read_table(path), fingerprint=hashlib.sha256(_file_identity(path).encode()).hexdigest()[:32])


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


class KDTexts:
    """The train stage's transform: query and document ids to texts, by `sentence_transformers.util.resolve_ids`
    over a prepared folder's queries and documents, first ``n_ways`` candidates kept.

    Why a class around it: `Dataset.set_transform` fingerprints a transform by pickling it, and resolve_ids' transform
    holds the lookup tables, so every training run pickled the prepared document text (at the study's size 16 s of the
    88 that loading took, then a "couldn't be hashed properly" warning). This one pickles as its folder, the
    files' identity and ``n_ways``: the fingerprint is then free and names the data, and a process that unpickles it
    (a data-loader worker started by spawn) reads the lookups from the folder instead of receiving them, and refuses
    a folder prepared again since.
    """

    def __init__(self, folder: str | Path, n_ways: int, identity: tuple[str, ...] | None = None, *,
                 queries=None, documents=None):
        self.folder, self.n_ways = Path(folder), int(n_ways)
        self.identity = identity or self._identity()
        self._resolve = None if queries is None else self._resolver(queries, documents)

    def _resolver(self, queries, documents):
        from sentence_transformers.util import resolve_ids

        return resolve_ids({"query_id": queries.select_columns(["query_id", "text"]),
                            "document_ids": documents.select_columns(["document_id", "text"])},
                           keep_columns=["scores"], max_list_length=self.n_ways)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self._resolve is None:
            if self._identity() != self.identity:  # prepared again since: the ids would meet other texts
                raise InputError(f"prepared KD folder {self.folder} changed while training read it (queries or "
                                 "documents rewritten); let the prepare stage finish, then rerun the train stage")
            self._resolve = self._resolver(_read_table(self.folder, "queries.parquet"),
                                           _read_table(self.folder, "documents.parquet"))
        return self._resolve(batch)

    def _identity(self) -> tuple[str, ...]:
        try:
            return tuple(_file_identity(self.folder / name) for name in KD_FILES[1:])  # queries, documents
        except FileNotFoundError:
            return ()

    def __reduce__(self):
        return type(self), (str(self.folder), self.n_ways, self.identity)


def load_kd_dataset(folder: str | Path, *, n_ways: int, max_samples: int | None = None):
    """The prepared KD set as a `datasets.Dataset` of (query, document_1..document_{n_ways}, scores).

    Reads ``train/queries/documents.parquet`` (ms-marco-en-bge schema) with `datasets`, keeps the
    first ``max_samples`` rows and checks them with the prepare stage's `check_kd`
    (``n_ways_min=n_ways``), so a folder edited after prepare is refused before training, naming the
    id. That check covers whole rows: a non-finite score or an unknown document id beyond the first
    ``n_ways`` candidates is refused too, although never trained on, because a prepared folder never
    holds one (prepare refuses it) and its presence means the folder was damaged. ``n_ways`` must be
    at least 2 (distillation compares candidates). Ids are resolved to texts lazily with
    `sentence_transformers.util.resolve_ids` (``set_transform``: texts are joined per batch, so the
    808k x 32 expanded texts never sit in memory or on disk). The first ``n_ways`` candidates are kept
    as stored, scores truncated alike; ``scores`` is the label column the collator and
    `MultiVectorDistillKLDivLoss` expect (query first, then the documents, positionally).
    """
    folder = Path(folder)
    train = _read_table(folder, "train.parquet")
    queries = _read_table(folder, "queries.parquet")
    documents = _read_table(folder, "documents.parquet")
    if max_samples is not None:
        train = train.select(range(min(max_samples, train.num_rows)))
    tables = {"train": train.with_format("arrow")[:], "queries": queries.data.table, "documents": documents.data.table}
    check_kd(tables, n_ways_min=n_ways, where=f"prepared KD folder {folder} (rerun prepare if it was edited)")
    train = train.select_columns(["query_id", "document_ids", "scores"])
    train.set_transform(KDTexts(folder, n_ways, queries=queries, documents=documents))
    return train


def kd_manifest(folder: str | Path) -> dict[str, Any]:
    """The prepare stage's ``manifest.json`` (source, revision, counts); `InputError` if absent."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise InputError(f"{path}: missing; the prepare stage writes it beside the KD parquet files.")
    return read_json(path)
