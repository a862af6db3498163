"""The prepare stage: the distillation (KD) set and the BEIR evaluation sets, validated, written atomically.

KD set folder (the ``lightonai/ms-marco-en-bge`` schema):
  ``train.parquet``     query_id: string, document_ids: list<string>, scores: list<double> (stored order kept)
  ``queries.parquet``   query_id: string, text: string   (only queries of the kept training rows)
  ``documents.parquet`` document_id: string, text: string (only documents those rows reference)
  ``manifest.json``     source, revision, n_train, n_queries, n_documents, sha256 {file: hex}, ...
Evaluation set folder (BEIR format):
  ``corpus.jsonl`` (_id, title, text), ``queries.jsonl`` (_id, text; only queries with qrels in the split),
  ``qrels/<split>.tsv`` (header query-id, corpus-id, score), ``manifest.json`` (source, split, counts,
  n_queries_dropped_without_qrels, sha256, url when downloaded).

Everything is checked before anything is written; every problem raises :class:`InputError` naming the
file, column or id and what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from colbench import pydocs
from colbench.atomic import atomic_dir, read_json
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
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
QRELS_HEADER = ["query-id", "corpus-id", "score"]


# ----------------------------------------------------------------------------------------- common


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    # Plain write: the folder itself is still the temporary one of atomic_dir.
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _verify_checksums(folder: Path) -> dict[str, Any]:
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{manifest_path} is missing: the folder was not written by the prepare stage; rerun it")
    manifest = read_json(manifest_path)
    for rel, expected in manifest.get("sha256", {}).items():
        path = folder / rel
        if not path.is_file():
            raise InputError(f"{path} is listed in {manifest_path} but missing; rerun the prepare stage")
        if sha256_file(path) != expected:
            raise InputError(f"{path} does not match its sha256 in {manifest_path} (edited?); rerun the prepare stage")
    return manifest


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


# ---------------------------------------------------------------------------------------- KD set


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
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise InputError(f"prepare.kd.max_samples={max_samples!r}: give a positive integer or null (all rows)")
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
        manifest["sha256"] = _checksums(tmp)
        _write_manifest(tmp, manifest)
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
            if not records:
                tables[name] = pa.table({c: pa.array([], pa.string()) for c in columns})
    return tables


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline(force: bool) -> Iterator[None]:
    """Switch the hub libraries to offline mode for the block (they read HF_HUB_OFFLINE at import only)."""
    if not force:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _hub_kd(source: str, revision: str | None) -> tuple[dict[str, pa.Table], str | None]:
    import datasets

    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"} or not _hub_reachable()
    tables, hashes = {}, set()
    for config in KD_COLUMNS:
        try:
            # Without the network the libraries retry for ~25 s per file: we check once and go offline.
            with _offline(offline):
                dataset = datasets.load_dataset(source, config, split="train", revision=revision)
        except (ConnectionError, FileNotFoundError, OSError, ValueError) as err:
            raise InputError(
                f"cannot load hub dataset {source!r} (config {config!r}, revision {revision or 'latest'})"
                f"{' offline and it is not in the Hugging Face cache' if offline else ''}: {err}. "
                f"Pre-populate the cache with `hf download --repo-type dataset {source}"
                f"{' --revision ' + revision if revision else ''}` on a machine with internet (and copy "
                "~/.cache/huggingface here), or point prepare.kd.source at a local folder holding "
                "train/queries/documents as .parquet or .jsonl"
            ) from err
        tables[config] = dataset.data.table
        hashes.update(_commit_of(dataset))
    # The datasets cache keeps hub datasets under <config>/<version>/<commit sha>/: that sha is the revision.
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
    (`colbench.train.load_kd_dataset`) on the prepared folder: columns and types, no nulls, unique ids,
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
            f"query {_example(qids, short)}; lower train.loss.n_ways or drop those rows"
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


def check_kd_dir(path: str | Path, *, n_ways_min: int = 1) -> dict:
    """Re-check a written KD folder (checksums, schema, references, counts); returns its manifest."""
    folder = Path(path)
    manifest = _verify_checksums(folder)
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


# ------------------------------------------------------------------------------------ BEIR sets


def beir_cache_dir() -> Path:
    """Where downloaded BEIR datasets are kept: $COLBENCH_BEIR_CACHE or ~/.cache/colbench/beir."""
    return Path(os.environ.get("COLBENCH_BEIR_CACHE") or Path.home() / ".cache" / "colbench" / "beir")


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

    ``source``: a BEIR dataset name (downloaded once into :func:`beir_cache_dir`), a local BEIR folder, or
    ``builtin:python-docs`` (needs the ``seed`` and ``builtin_options`` given to :func:`prepare_kd` to get the
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
            folder, extra["url"] = _download_beir(source)
        else:
            raise InputError(f"prepare.datasets.{name}.source={source!r}: no such folder, and not a BEIR dataset name")
        corpus, queries, qrels, dropped = load_beir_folder(folder, split)
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
        manifest["sha256"] = _checksums(tmp)
        _write_manifest(tmp, manifest)
    return manifest


def _download_beir(name: str) -> tuple[Path, str]:
    import beir.util

    url = BEIR_URL.format(name=name)
    cache = beir_cache_dir()
    target = cache / name
    if (target / "corpus.jsonl").is_file():
        return target, url
    cache.mkdir(parents=True, exist_ok=True)
    # Download into a temporary folder: beir reuses any existing zip, so a partial one must never stay.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache))
    saved = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # requests has no timeout by default: a dead network would hang forever
    try:
        unzipped = Path(beir.util.download_and_unzip(url, str(tmp)))
        if not (unzipped / "corpus.jsonl").is_file():
            raise InputError(f"{url}: the archive has no {name}/corpus.jsonl; is {name!r} a BEIR dataset?")
        if target.exists():
            shutil.rmtree(target)
        os.replace(unzipped, target)
    except (OSError, zipfile.BadZipFile) as err:
        raise InputError(
            f"cannot download BEIR dataset {name!r} from {url} ({type(err).__name__}: {err}). Download and unzip it "
            f"on a machine with internet into {target} (or $COLBENCH_BEIR_CACHE/{name}), or set "
            f"prepare.datasets.<name>.source to a local BEIR folder (corpus.jsonl, queries.jsonl, qrels/)"
        ) from err
    finally:
        socket.setdefaulttimeout(saved)
        shutil.rmtree(tmp, ignore_errors=True)
    return target, url


def load_beir_folder(folder: str | Path, split: str) -> tuple[list[dict], list[dict], list[tuple[str, str, int]], int]:
    """Check a BEIR folder and load it: (corpus, queries with qrels, qrels rows, queries dropped).

    Loads through beir's GenericDataLoader after checks it does not make (bad lines, duplicate ids,
    dangling qrels). Orders: corpus and queries as in their files, qrels as in the tsv.
    """
    from beir.datasets.data_loader import GenericDataLoader

    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    missing = [p.name for p in (folder / "corpus.jsonl", folder / "queries.jsonl") if not p.is_file()]
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        missing.append(f"qrels/{split}.tsv (splits here: {have or 'none'})")
    if missing:
        raise InputError(f"BEIR folder {folder}: missing {', '.join(missing)}")
    doc_ids = _scan_ids(folder / "corpus.jsonl", ("_id", "text"))
    query_order = _scan_ids(folder / "queries.jsonl", ("_id", "text"))
    if not doc_ids:
        raise InputError(f"{folder / 'corpus.jsonl'} is empty: a collection needs documents")
    rows = _scan_qrels(qrels_path)
    docs_set, queries_set = set(doc_ids), set(query_order)
    for kind, known, index in (("documents", docs_set, 1), ("queries", queries_set, 0)):
        unknown = [row[index] for row in rows if row[index] not in known]
        if unknown:
            raise InputError(f"{qrels_path}: {len(unknown)} qrel(s) reference {kind} not in the folder, e.g. "
                             f"{unknown[0]!r}; fix the qrels or the {'corpus' if index else 'queries'} file")
    corpus, queries, qrels = GenericDataLoader(data_folder=str(folder)).load(split=split)
    corpus_records = [{"_id": i, "title": corpus[i].get("title") or "", "text": corpus[i].get("text") or ""}
                      for i in doc_ids]
    kept = [{"_id": q, "text": queries[q]} for q in query_order if q in qrels]
    blank = [q["_id"] for q in kept if not (q["text"] or "").strip()]
    if blank:
        raise InputError(f"{folder / 'queries.jsonl'}: {len(blank)} judged quer(ies) have an empty text, e.g. "
                         f"{blank[0]!r}; give them text or remove them and their qrels")
    qrels_rows = [(q, d, s) for q, docs in qrels.items() for d, s in docs.items()]
    return corpus_records, kept, qrels_rows, len(query_order) - len(kept)


def _scan_ids(path: Path, required: tuple[str, ...]) -> list[str]:
    ids: list[str] = []
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
        ids.append(value)
    return ids


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
    manifest = _verify_checksums(folder)
    corpus, queries, qrels, dropped = load_beir_folder(folder, manifest.get("split", "test"))
    counts = {"n_documents": len(corpus), "n_queries": len(queries), "n_qrels": len(qrels)}
    for key, value in counts.items():
        if manifest.get(key) != value:
            raise InputError(f"{folder}: manifest says {key}={manifest.get(key)}, the files hold {value}; rerun prepare")
    if dropped:
        raise InputError(f"{folder}: {dropped} queries have no qrels; rerun the prepare stage")
    return manifest
