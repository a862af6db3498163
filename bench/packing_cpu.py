"""What `train.pack_documents` saves at ModernBERT-base's size, on the CPU: one batch of training documents through
forward and backward, padded (params.yaml's path, transformers' SDPA) against packed (real tokens only).

A training step at that size takes minutes on a 2-core CPU (`bench/train_gpu.py` times whole steps, with the tiny
model there); one batch of documents shows what the levers change where the model's cost lies. The model is a
randomly initialised ModernBERT with ModernBERT-base's sizes (22 layers, hidden 768, 8,192 positions, local
window 128), built as `bench/train_gpu.py` builds it, in the study's ColBERT (`colbench.model.build_colbert`:
128 dimensions, documents cut at 180 tokens, `[D] ` prefix, punctuation skiplist); packing is installed by
`colbench.packing.pack_documents`, as `colbench.train.build_trainer` installs it. The documents are
`bench/train_gpu.py`'s synthetic MS MARCO-like passages (mean 60 words), embedded as the training loss embeds
them (`model(features, task="document")`); the backward pass starts from the sum of squares of their real tokens'
embeddings. On a CPU the packed attention is the padded fallback of `colbench.packing` (no variable-length
kernel): only the attention sees the padding there, every other layer computes real tokens only.

Reported: median seconds of forward and backward over ``--repeats`` runs after one warm-up, tokens computed,
and how far the packed embeddings and gradients are from the padded ones (fp32).

    .venv/bin/python bench/packing_cpu.py                  # reports/bench/packing_cpu.json and .md (about 5 min)
    .venv/bin/python bench/packing_cpu.py --size tiny --out /tmp/x   # a quick check
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collate import cpu_name  # noqa: E402
from train_gpu import REPO, synthetic_text, words_lognormal, write_modernbert_base  # noqa: E402


def documents(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [synthetic_text(rng, words_lognormal(rng, 60, 0.45, 8, 250)) for _ in range(n)]


def forward_backward(model, texts: list[str]) -> tuple:
    """Seconds of the forward and the backward pass, the token embeddings, and the parameters' gradients."""
    import torch

    features = model.preprocess(texts, prompt=model.prompts["document"], task="document")
    real = features["attention_mask"].bool()[..., None]
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    embeddings = model(dict(features), task="document")["token_embeddings"]
    forward = time.perf_counter() - started
    embeddings = torch.where(real, embeddings, 0)  # the loss never sees a padding position
    embeddings.pow(2).sum().backward()
    backward = time.perf_counter() - started - forward
    gradients = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return forward, backward, embeddings.detach(), gradients


def measure(size: str, n_documents: int, repeats: int, work: Path) -> dict:
    import torch

    from colbench import packing
    from colbench.model import build_colbert

    torch.manual_seed(0)
    base = write_modernbert_base(work / f"modernbert-{size}", REPO / "tests/fixtures/pylate/modernbert/base", size)
    padded = build_colbert(str(base), embedding_dim=128, query_length=32, document_length=180, query_prefix="[Q] ",
                           document_prefix="[D] ", query_expansion=True, attend_to_expansion_tokens=False,
                           skiplist="punctuation", seed=42)
    packed = copy.deepcopy(padded)
    packing.pack_documents(packed)
    texts = documents(n_documents, seed=0)
    mask = padded.preprocess(texts, prompt=padded.prompts["document"], task="document")["attention_mask"]
    rows, outputs = {}, {}
    for name, model in (("padded", padded), ("packed", packed)):
        computed = []  # the token positions the first layer receives: what every layer computes
        model[0].model.layers[0].register_forward_pre_hook(
            lambda module, args, kwargs: computed.append((args or [kwargs.get("hidden_states")])[0].shape[:2].numel()),
            with_kwargs=True)
        timings = []
        for run in range(repeats + 1):
            forward, backward, *outputs[name] = forward_backward(model, texts)  # the last run's outputs only
            if run:  # the first warms up
                timings.append((forward, backward))
        rows[name] = {"forward_s": round(statistics.median(t[0] for t in timings), 3),
                      "backward_s": round(statistics.median(t[1] for t in timings), 3), "computed_tokens": computed[-1]}
        rows[name]["total_s"] = round(rows[name]["forward_s"] + rows[name]["backward_s"], 3)
    (padded_embeddings, padded_grads), (packed_embeddings, packed_grads) = outputs["padded"], outputs["packed"]
    gradient_gap = max(float((packed_grads[k] - g).norm() / g.norm().clamp_min(1e-30)) for k, g in padded_grads.items())
    return {
        "size": size, "documents": n_documents, "repeats": repeats, "real_tokens": int(mask.sum()),
        "longest": int(mask.sum(1).max()), "rows": rows,
        "speedup": round(rows["padded"]["total_s"] / rows["packed"]["total_s"], 2),
        "embedding_max_abs_diff": float((packed_embeddings - padded_embeddings).abs().max()),
        "gradient_max_rel_diff": gradient_gap,
        "threads": torch.get_num_threads(), "cpu": cpu_name(), "load_average": os.getloadavg(),
        "torch": torch.__version__, "python": platform.python_version(),
    }


def markdown(result: dict) -> str:
    lines = [
        "# Packed training documents on the CPU (`bench/packing_cpu.py`)",
        "",
        f"ModernBERT ({result['size']} sizes, random weights) in the study's ColBERT; one batch of "
        f"{result['documents']} synthetic MS MARCO-like passages ({result['real_tokens']:,} real tokens, the longest "
        f"{result['longest']}), forward and backward as the training loss runs them; median of {result['repeats']} "
        f"runs after a warm-up. {result['cpu']}, {result['threads']} threads, torch {result['torch']}; load average "
        f"{', '.join(f'{x:.1f}' for x in result['load_average'])} at the end.",
        "",
        "| documents | computed tokens | forward (s) | backward (s) | total (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {row['computed_tokens']:,} | {row['forward_s']} | {row['backward_s']} | "
                     f"{row['total_s']} |")
    lines += ["", f"Packed is {result['speedup']}x as fast. Packed against padded: token embeddings within "
              f"{result['embedding_max_abs_diff']:.1e} (largest absolute difference), every parameter's gradient "
              f"within {result['gradient_max_rel_diff']:.1e} (largest relative difference of its norm).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("base", "tiny"), default="base")
    parser.add_argument("--documents", type=int, default=32, help="documents in the batch (a query has 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant, after one warm-up")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        result = measure(options.size, options.documents, options.repeats, Path(work))
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "packing_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (options.out / "packing_cpu.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
