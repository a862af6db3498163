"""Index build threads: what building the Voyager index with every core (`index.num_threads: -1`, the study's
setting) changes against a single-thread build (`1`, the demo's: the same graph on every run).

With more threads, the order in which token vectors join the HNSW graph depends on thread scheduling, so the
graph, and which candidates a search finds, can change from one build to the next. This measures how much:
on one collection (default: the demo's evaluation collection, prepared and encoded as `bench/retrieval.py`
does, by an untrained ColBERT on the bundled MiniLM; `--collection PATH` takes any local BEIR folder), with
the index and retrieve settings of `--params` (default demo/params.yaml: M=12, float8, tokens_per_query_token
32, where recall is not yet saturated; the study's M=64 and 100 tokens per query token find every exact top-100
document of a collection this small either way), it builds the index `--repeats` times with one thread and
`--repeats` times with `--threads` (default -1: every core), and for each build records the build time,
whether the graph file equals the first single-thread build's (sha256), and for every `ef_search` of the
trade-off sweep the recall@100 of hnsw search against exact MaxSim on the same store and NDCG@10.

    .venv/bin/python bench/index_threads.py                  # reports/bench/index_threads.json and .md
    .venv/bin/python bench/index_threads.py --repeats 1 --out /tmp/x   # quicker

Stores and prepared collections are cached in --work (shared with bench/retrieval.py); the indexes are rebuilt.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil  # noqa: E402
import torch  # noqa: E402
from retrieval import demo_collection, encode_collection  # noqa: E402  (bench/, this script's folder)

from colbench.atomic import write_json, write_text  # noqa: E402
from colbench.config import load_params  # noqa: E402
from colbench.evaluate import evaluate_run  # noqa: E402
from colbench.index import build_index, open_index  # noqa: E402
from colbench.retrieve import search  # noqa: E402
from colbench.tradeoff import overlap  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one_build(docs, queries, qrels, exact, folder: Path, threads: int, params, ignore_identical_ids: bool) -> dict:
    ix, r = params.index, params.retrieve
    stats = build_index(docs, folder, space=ix.space, M=ix.M, ef_construction=ix.ef_construction,
                        storage=ix.storage, seed=params.base.seed, num_threads=threads)
    index = open_index(folder, docs)
    points = []
    for ef in sorted(set(r.tradeoff_ef_search) | {r.ef_search}):
        run = search(queries, docs, k=r.k, mode="hnsw", index=index, ef_search=ef,
                     tokens_per_query_token=r.tokens_per_query_token, dtype=r.maxsim_dtype, device="cpu")
        metrics, _ = evaluate_run(run, qrels, ignore_identical_ids=ignore_identical_ids)
        points.append({"ef_search": ef, "recall@100_vs_exact": round(overlap(run, exact), 4),
                       "ndcg@10": round(metrics["ndcg@10"], 5)})
    graph = hashlib.sha256((folder / "tokens.voy").read_bytes()).hexdigest()
    return {"threads": threads, "build_s": stats["build_s"], "graph_sha256": graph, "points": points}


def markdown(result: dict) -> str:
    builds = result["builds"]
    efs = [p["ef_search"] for p in builds[0]["points"]]
    lines = ["# Index build threads", "",
             f"Machine: {result['machine']}. Collection: {result['collection']} ({result['n_documents']} documents, "
             f"{result['n_token_vectors']:,} token vectors, {result['n_queries']} queries). Index and retrieve "
             f"settings of {result['params']}: {result['index']}; hnsw search with tokens_per_query_token "
             f"{result['tokens_per_query_token']}, recall@100 against exact MaxSim on the same store (an ef_search "
             "below tokens_per_query_token searches as that: Voyager's query ef is max(ef, k)).", "",
             "| build | threads | build s | same graph as build 1 | "
             + " | ".join(f"recall@100 ef {ef}" for ef in efs) + " | " + " | ".join(f"NDCG@10 ef {ef}" for ef in efs) + " |",
             "| --- " * (4 + 2 * len(efs)) + "|"]
    for i, b in enumerate(builds, 1):
        threads = f"{b['threads']} ({result['cores']} cores)" if b["threads"] == -1 else b["threads"]
        lines.append(f"| {i} | {threads} | {b['build_s']:.1f} | "
                     f"{'yes' if b['graph_sha256'] == builds[0]['graph_sha256'] else 'no'} | "
                     + " | ".join(f"{p['recall@100_vs_exact']:.4f}" for p in b["points"]) + " | "
                     + " | ".join(f"{p['ndcg@10']:.4f}" for p in b["points"]) + " |")
    lines += ["", result["summary"], ""]
    return "\n".join(lines)


def summary(builds: list[dict], cores: int) -> str:
    single = [b for b in builds if b["threads"] == 1]
    multi = [b for b in builds if b["threads"] != 1]
    gaps = [abs(m["recall@100_vs_exact"] - s["recall@100_vs_exact"])
            for b in multi for m, s in zip(b["points"], single[0]["points"])]
    same_single = all(b["graph_sha256"] == single[0]["graph_sha256"] for b in single)
    speed = (sum(b["build_s"] for b in single) / len(single)) / (sum(b["build_s"] for b in multi) / len(multi))
    return (f"Single-thread builds {'gave the same graph every time' if same_single else 'DIFFERED'}; "
            f"{cores}-core builds were {speed:.2f}x as fast and their recall@100 differed from the single-thread "
            f"build's by at most {max(gaps):.4f} (mean {sum(gaps) / len(gaps):.4f}) over the ef_search values.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=ROOT / "demo" / "params.yaml")
    parser.add_argument("--collection", type=Path, help="a local BEIR folder (default: the demo's collection)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=-1, help="the multi-thread builds' num_threads (-1: every core)")
    parser.add_argument("--repeats", type=int, default=2, help="builds per thread count")
    parser.add_argument("--work", type=Path, default=Path("/tmp/colbench-bench-retrieval"))
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    params = load_params(args.params)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.collection is None:
        collection = demo_collection(args.work)
    else:
        collection = {"name": args.collection.name, "path": str(args.collection.resolve()), "split": args.split,
                      "ignore_identical_ids": False}
    docs, queries, qrels, _, work = encode_collection(Path(collection["path"]), collection["split"], args.work, 32)
    r = params.retrieve
    exact = search(queries, docs, k=r.k, mode="exact", dtype="float32", device="cpu")
    builds = []
    for threads in [1] * args.repeats + [args.threads] * args.repeats:
        folder = work / "index-threads"
        shutil.rmtree(folder, ignore_errors=True)
        builds.append(one_build(docs, queries, qrels, exact, folder, threads, params, collection["ignore_identical_ids"]))
        print(builds[-1], flush=True)
    cores = psutil.cpu_count() if args.threads == -1 else args.threads
    result = {"machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, torch {torch.__version__}",
              "params": str(args.params.relative_to(ROOT) if args.params.is_relative_to(ROOT) else args.params),
              "collection": collection["name"], "n_documents": len(docs), "n_token_vectors": int(docs.n_tokens),
              "n_queries": len(queries), "index": {k: getattr(params.index, k) for k in ("M", "ef_construction", "storage")},
              "tokens_per_query_token": r.tokens_per_query_token, "cores": cores, "builds": builds,
              "summary": summary(builds, cores),
              "wall_s": round(time.perf_counter() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "index_threads.json", result)
    write_text(args.out / "index_threads.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
