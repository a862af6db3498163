"""Run files: a retrieval run as TREC text (``qid Q0 docid rank score tag``), written atomically, read back by id.

A run is id-keyed, ``{query_id: {doc_id: score}}``; the file ranks each query's hits by score, then document id
(the order every metric sees, see `colbench.evaluate`). Ids cannot hold whitespace (the format splits on it).
"""

from __future__ import annotations

from pathlib import Path

from colbench.atomic import atomic_file
from colbench.errors import InputError


def write_trec(run: dict[str, dict[str, float]], path: str | Path, tag: str) -> None:
    """Write ``run`` as a TREC run file (``qid Q0 docid rank score tag``), ranked by score then doc id; atomic."""
    if not tag or any(c.isspace() for c in tag):
        raise InputError(f"TREC run tag {tag!r} must be a non-empty word without spaces")
    with atomic_file(path, "w", encoding="utf-8") as out:
        for qid, hits in run.items():
            for ident in (qid, *hits):
                if not ident or any(c.isspace() for c in ident):
                    raise InputError(f"id {ident!r} (query {qid!r}) is empty or has whitespace: it cannot be "
                                     f"written to the TREC run file {path}")
            ranked = sorted(hits.items(), key=lambda item: (-item[1], item[0]))
            for rank, (did, score) in enumerate(ranked, start=1):
                out.write(f"{qid} Q0 {did} {rank} {score!r} {tag}\n")


def read_trec(path: str | Path) -> dict[str, dict[str, float]]:
    """Read a TREC run file written by :func:`write_trec` (or any 6-column run) into ``{qid: {docid: score}}``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"run file {path} does not exist; rerun the retrieve stage")
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                qid, _, did, _, score, _ = parts
                value = float(score)
            except ValueError as exc:
                raise InputError(f"run file {path}, line {line_no}: expected `qid Q0 docid rank score tag`, "
                                 f"got {line.strip()!r}") from exc
            hits = run.setdefault(qid, {})
            if did in hits:
                raise InputError(f"run file {path}, line {line_no}: document {did!r} listed twice for query {qid!r}")
            hits[did] = value
    return run
