"""GPU training throughput of the study's configuration, and of speed levers that leave its update unchanged.

What runs: `colbench.train.train`, the pipeline's own code path, with the study's settings read from
params.yaml by `colbench.config.load_params` (`train.model`, `train.loss`, `train.args`, `train.seed`,
`train.micro_batch`, `train.attn_implementation`, `train.document_chunk`), on a synthetic KD set prepared by the pipeline's
`colbench.kd.prepare_kd`. What the benchmark overrides is recorded per run under ``overrides``:

- the base model: ModernBERT-base's architecture (hidden 768, 22 layers, 12 heads, GLU 1152, local
  attention 128 with a global layer every third) built offline from `ModernBertConfig` with random
  weights, with the repository's offline stand-in tokenizer (the BERT WordPiece fixture; ModernBERT's own
  BPE makes about as many tokens of English text): speed and memory depend on shapes, not on weights.
  ``--model-size tiny`` (2 layers of 64) is for smoke tests (``--smoke``: tiny, on the CPU, 4-way);
- ``max_steps`` (warm-up + ``--steps`` + 1: the clock stops training one step short of it, so that no
  final checkpoint is written), ``logging_steps`` 5 (the losses are compared between configurations),
  ``save_steps`` past the end; on CPU (smoke) bf16 and tf32 are off;
- the levers, each one a setting of the pipeline that keeps the optimizer step at the study's
  per_device x accumulation = 4 x 4 = 16 queries and the same arithmetic: ``--micro-batch`` (train.micro_batch:
  queries per forward pass, accumulation recomputed by `colbench.train.batch_split`),
  ``--attn-implementation`` (train.attn_implementation), ``--document-chunk N`` (train.document_chunk: each
  query's candidates longest first, the documents embedded N at a time, each chunk only as wide as its longest),
  ``--pack-documents`` (train.pack_documents), ``--optim adamw_torch_fused``, ``--torch-compile`` and ``--workers`` (train.args.optim / torch_compile /
  dataloader_num_workers).

Not run: the held-out evaluator, the loss canary and checkpoints (every 5,000 steps in the study), so the
time is that of training steps alone.

Synthetic data (MS MARCO-like): 32 candidates per query (the study's `train.loss.n_ways`); passages of
``round(X)`` words with X lognormal, mean 60 words, sigma 0.45 (median 54 words; 87 % of passages have
30-120 words, 2 % more than 135), clipped to [8, 250]; queries lognormal, mean 6 words, sigma 0.4,
clipped to [2, 20]. Words are 77 % common English words (one token each), 20 % longer words that the
tokenizer splits (1.7 tokens each) and 3 % numbers, with a comma after 7 % of words and a full stop ending
sentences of about 15 words: about 1.3 tokens per word, as English passages have. Documents are cut at
the study's 180 tokens by the model (`train.model.document_length`), queries padded to 32 with [MASK].

Measured per configuration, each in a fresh child process (its own compile caches, allocator, peak memory):

- seconds per optimizer step and queries per second over the steps after ``--warmup-steps`` (allocator
  growth, kernel selection and compilation happen in the first steps), with the GPU synchronised at both
  ends of the timed window; the window closes after ``--steps`` steps or ``--max-seconds``;
- tokens per optimizer step, counted on the collated batches as the loss receives them (a forward
  pre-hook on the loss): query tokens (all 32 per query are computed and scored: the attended ones and
  the [MASK] expansion), document tokens whose attention mask is 1 (real) and the document tokens the
  encoder computes (padded: the loss runs the 32 document columns as one forward, padded to the widest,
  or with ``document_chunk`` in chunks of that many rows, each as wide as its longest document);
- model FLOPs per step = 6 x parameters x real tokens (the usual estimate of a forward and a backward
  pass; parameters without the token-embedding matrix, which is a lookup; attention scores left out) and
  MFU = model FLOP/s / the GPU's dense bf16 peak, chosen by the device's name (NVIDIA's datasheets; the
  figures with sparsity are twice these): H200 SXM 989 TFLOP/s, H200 NVL 835; another device: 989, and
  the row's ``peak_source`` says it was assumed. A large bf16 product reached about 790 on the H200 SXM
  measured before. ``padded_mfu`` counts padded tokens;
- peak GPU memory allocated and reserved (the caching allocator's pool: what the process holds of the
  GPU), and the hours one epoch of the study's 808,728 queries would take;
- with torch.compile, the graphs dynamo compiled inside the timed window (``dynamo_graphs_in_window``: a
  recompile for a new batch shape there slows the window; 0 means the timing is of compiled steps only);
- the loss logged every 5 steps against the first configuration's: the same data order and initial
  weights, so only the arithmetic's rounding may differ.

``--sweep`` runs, in this order, within ``--budget`` seconds: params.yaml as it is (4 x 4, sdpa, 4 data-loader
workers; what the workers save, tokenisation in the training process, is bench/collate.py's to measure); micro-batch
16 (one forward of 16 queries x 32 documents); + fused AdamW; + document chunks of
64 (8 forwards of 64 documents, each as wide as its longest); + packed documents (``train.pack_documents``: each
chunk's documents without their padding, `colbench.packing`; torch's variable-length flash attention on the GPU);
+ flash_attention_2 (without compile, on the document-chunk row's levers) when the
flash_attn package imports (sentence-transformers 6.2 refuses it with the study's
`attend_to_expansion_tokens: false`: the row then shows that refusal, in seconds); + torch.compile (on the
document-chunk row's levers). torch.compile comes last because it is the slowest to start: it gets all the
budget the other rows left, and if it runs out of time it costs no other row. So that it has a fair share,
the rows before it time a window of at most ``--sweep-max-seconds`` (8 s: 10 to 40 steps), the compile row
and single runs at most ``--max-seconds`` (15 s).

The result file is written after every configuration, with ``"complete": false`` until the sweep ends, so
a run stopped early keeps its finished rows. ``--run-id`` is recorded in it (bench/gpu.sh passes one, and
bench/study_gpu.py uses no training result of another run). A SIGTERM or SIGINT to this process (gpu.sh's
``timeout``) kills the running configuration's process group (it runs in a session of its own, out of
reach of signals sent to this one's group) before this process exits: no child is left on the GPU.

Tokenisation runs on one thread (TOKENIZERS_PARALLELISM=false unless set otherwise), as `make study` runs the
pipeline: the Makefile exports it and `python -m colbench.train` sets it.

    python bench/train_gpu.py --sweep                       # one H200: --budget (260) s at most, reports/bench/train_gpu.*
    python bench/train_gpu.py --micro-batch 16 --optim adamw_torch_fused   # one configuration
    python bench/train_gpu.py --smoke [--sweep]             # CPU, tiny model, into /tmp: checks that it runs

Without CUDA (and without ``--smoke`` / ``--device cpu``) it exits with status 2 and says why.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDY_QUERIES = 808_728
TARGET_QUERIES_PER_S = 112  # the target: the 808,728-query epoch in about 2 hours
LOG_EVERY = 5
SMOKE_OUT = Path(tempfile.gettempdir()) / "colbench-bench-smoke"

COMMON_WORDS = (
    "the of and to in is was for on with as by at from that this which be are an or it were "
    "has have not but had they his her their its one two three first new more other after also "
    "city river government university population company music system water energy history war "
    "season film species family school health market century world state team data model "
    "process method result study cell protein patient treatment disease country region area "
    "language law court election party president member building station road line game player "
    "album song book series character power network software computer program service product"
).split()
# MS MARCO-like words that WordPiece (and BPE) split into two or three pieces.
LONG_WORDS = (
    "approximately temperature symptoms ingredients cholesterol fahrenheit mortgage deductible photosynthesis "
    "celsius prescription manufacturer recommended requirements certification insurance vitamins bacteria "
    "pregnancy definition pronunciation kilometers headquarters constitution independence calories "
    "carbohydrates antibiotics ligament tendon salary hourly paycheck refinance contractor thermostat "
    "inflammation diagnosis medication dosage ounces tablespoons teaspoon acres inches thyroid hormone "
    "estrogen migraine dermatitis eczema allergies pneumonia bronchitis vaccine itinerary passport "
    "registration dealership warranty transmission"
).split()


def words_lognormal(rng: random.Random, mean: float, sigma: float, low: int, high: int) -> int:
    """A word count: lognormal with the given mean (not median) and sigma of log, rounded and clipped."""
    mu = math.log(mean) - sigma**2 / 2
    return min(high, max(low, round(rng.lognormvariate(mu, sigma))))


def synthetic_text(rng: random.Random, n_words: int) -> str:
    """English-like text of ``n_words`` words, about 1.3 tokens per word (see the module docstring)."""
    out = []
    for i in range(n_words):
        r = rng.random()
        word = rng.choice(LONG_WORDS) if r < 0.20 else str(rng.randint(1, 2025)) if r < 0.23 else rng.choice(COMMON_WORDS)
        r = rng.random()
        out.append(word + ("," if r < 0.07 else "." if r < 0.137 or i == n_words - 1 else ""))
    return " ".join(out)


def write_synthetic_kd(
    folder: Path,
    *,
    n_queries: int,
    n_documents: int,
    n_candidates: int,
    doc_words: tuple[int, int] | None = None,
    query_words: tuple[int, int] | None = None,
    seed: int = 0,
) -> Path:
    """A KD folder in the prepared format, deterministic in ``seed``.

    Passage and query lengths follow the MS MARCO-like distributions of the module docstring; a
    ``(low, high)`` in ``doc_words`` / ``query_words`` draws uniformly from that range instead
    (bench/train_cpu.py's reference configuration wants passages that all reach the cap). The synthetic
    tables are written as a local KD source and prepared by the pipeline's own `colbench.kd.prepare_kd`
    (the same checks, schema and manifest as the prepare stage).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from colbench.kd import prepare_kd

    rng = random.Random(seed)
    raw = folder.with_name(folder.name + ".source")
    raw.mkdir(parents=True, exist_ok=True)

    def n_words(uniform, mean, sigma, low, high):
        return rng.randint(*uniform) if uniform else words_lognormal(rng, mean, sigma, low, high)

    doc_ids = [f"d{i}" for i in range(n_documents)]
    doc_texts = [synthetic_text(rng, n_words(doc_words, 60, 0.45, 8, 250)) for _ in doc_ids]
    pq.write_table(pa.table({"document_id": doc_ids, "text": doc_texts}), raw / "documents.parquet")
    query_ids = [f"q{i}" for i in range(n_queries)]
    query_texts = [synthetic_text(rng, n_words(query_words, 6, 0.4, 2, 20)) for _ in query_ids]
    pq.write_table(pa.table({"query_id": query_ids, "text": query_texts}), raw / "queries.parquet")
    candidates = [rng.sample(doc_ids, n_candidates) for _ in query_ids]
    scores = [sorted((rng.uniform(-5, 10) for _ in range(n_candidates)), reverse=True) for _ in query_ids]
    pq.write_table(pa.table({"query_id": query_ids, "document_ids": candidates, "scores": scores}), raw / "train.parquet")
    prepare_kd(str(raw), folder, revision=None, max_samples=None, seed=seed, n_ways_min=n_candidates)
    shutil.rmtree(raw)
    return folder


def write_modernbert_base(folder: Path, tokenizer_dir: Path, size: str) -> Path:
    """A randomly initialised ModernBERT encoder folder with ModernBERT-base's sizes (or tiny ones); reused
    when ``folder`` already holds one of that size (the GPU script builds it once for both benchmarks)."""
    marker = folder / "colbench_bench_size.txt"
    if marker.is_file() and marker.read_text() == size:
        return folder
    import torch
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    sizes = (
        # answerdotai/ModernBERT-base's config.json; the other ModernBertConfig defaults are base's too.
        dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152, vocab_size=50368)
        if size == "base"
        else dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, vocab_size=len(tokenizer))
    )
    config = ModernBertConfig(
        **sizes,
        max_position_embeddings=8192,
        # The stand-in tokenizer (the fixture's WordPiece, offline) sets the special ids.
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(0)
    ModernBertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    marker.write_text(size)
    return folder


def bf16_peak(device_name: str) -> tuple[float, str]:
    """Dense bf16 FLOP/s of a GPU by its name, and where the figure comes from (NVIDIA's datasheets, without
    sparsity). An unknown device gets the H200 SXM's, and the source says that it was assumed."""
    if "H200" in device_name and "NVL" in device_name:
        return 835e12, "H200 NVL dense bf16, NVIDIA datasheet"
    if "H200" in device_name:
        return 989e12, "H200 SXM dense bf16, NVIDIA datasheet"
    return 989e12, f"H200 SXM dense bf16 ASSUMED: no peak known for {device_name!r}"


# ----------------------------------------------------------------------------------- configurations
LEVERS = ("micro_batch", "attn_implementation", "document_chunk", "pack_documents", "optim", "torch_compile", "workers")
SWEEP_DOCUMENT_CHUNK = 64


def sweep_configs() -> list[tuple[str, dict]]:
    """The sweep's configurations, each adding one lever to the one before (levers not named: params.yaml's, its
    data-loader workers among them: what they save is bench/collate.py's tokenisation time per step)."""
    fast = {"micro_batch": 16}
    configs = [("params.yaml (4 x 4)", {}), ("micro-batch 16", dict(fast))]
    fast["optim"] = "adamw_torch_fused"
    configs.append(("+ fused AdamW", dict(fast)))
    fast["document_chunk"] = SWEEP_DOCUMENT_CHUNK
    configs.append((f"+ document chunks of {SWEEP_DOCUMENT_CHUNK}", dict(fast)))
    configs.append(("+ packed documents", {**fast, "pack_documents": True}))
    if importlib.util.find_spec("flash_attn") is not None:
        configs.append(("+ flash_attention_2 (no compile)", {**fast, "attn_implementation": "flash_attention_2"}))
    # Last: the slowest to start, it gets whatever budget the rows above left (module docstring).
    configs.append(("+ torch.compile", {**fast, "torch_compile": True}))
    return configs


def settings(levers: dict, *, steps: int, warmup: int, cuda: bool, base_model: str, smoke: bool = False) -> dict:
    """`train`'s keyword arguments: params.yaml's train sections, the benchmark's overrides and ``levers``
    (``smoke``: 4 candidates per query instead of 32, so that a step of the tiny model takes seconds on a CPU).

    Returns them with ``overrides`` = ``{key: {"params": file's value, "bench": value used}}``.
    """
    from colbench.config import load_params

    params = load_params(REPO / "params.yaml")
    t = params.train
    sections = {
        "train": {"base_model": t.base_model, "micro_batch": t.micro_batch, "attn_implementation": t.attn_implementation,
                  "document_chunk": t.document_chunk, "pack_documents": t.pack_documents},
        "train.loss": dataclasses.asdict(t.loss),
        "train.args": dataclasses.asdict(t.args),
    }
    wanted = {
        ("train", "base_model"): base_model,
        ("train.args", "max_steps"): warmup + steps + 1,  # the clock stops one short: no final checkpoint
        ("train.args", "logging_steps"): LOG_EVERY,
        ("train.args", "save_steps"): 10**9,
        # Step 1's loss as well: the same weights and data in every configuration, so only rounding may differ.
        ("train.args", "logging_first_step"): True,
    }
    if not cuda:
        wanted.update({("train.args", "bf16"): False, ("train.args", "tf32"): False})
    if smoke:
        wanted["train.loss", "n_ways"] = 4
    for name, value in levers.items():
        key = {"optim": "optim", "torch_compile": "torch_compile", "workers": "dataloader_num_workers"}.get(name)
        wanted["train.args" if key else "train", key or name] = value
    overrides = {}
    for (section, name), value in wanted.items():
        if sections[section].get(name) != value:
            overrides[f"{section}.{name}"] = {"params": sections[section].get(name), "bench": value}
        sections[section][name] = value
    return {
        "base_model": sections["train"]["base_model"],
        "micro_batch": sections["train"]["micro_batch"],
        "attn_implementation": sections["train"]["attn_implementation"],
        "document_chunk": sections["train"]["document_chunk"],
        "pack_documents": sections["train"]["pack_documents"],
        "model_kwargs": dataclasses.asdict(t.model),
        "loss_kwargs": sections["train.loss"],
        "args": sections["train.args"],
        "seed": t.seed,
        "overrides": overrides,
    }


# ------------------------------------------------------------------------------- one configuration
class TokenCounter:
    """Forward pre-hook on the loss: counts the tokens of each micro-batch it receives.

    Shapes are read on the host; the attention-mask sums and document lengths stay on the device until the end,
    so counting adds no synchronisation to the timed steps.
    """

    def __init__(self, document_chunk: int | None, packed: bool = False) -> None:
        self.document_chunk = document_chunk
        self.packed = packed  # train.pack_documents: the encoder computes the real document tokens only
        self.micro_batches = 0
        self.query_tokens = 0  # [batch, 32]: attended tokens and [MASK] expansion, all computed and scored
        self.doc_collated = 0  # the document columns' own shapes
        self.query_attended = []  # device scalars
        self.doc_lengths = []  # device tensors [n_ways, batch]: the merged batch's rows, column-major

    def __call__(self, module, args):
        import torch

        query, docs = args[0][0], args[0][1:]  # the loss's (features per column, labels): query, then documents
        self.micro_batches += 1
        self.query_tokens += query["input_ids"].numel()
        self.doc_collated += sum(d["input_ids"].numel() for d in docs)
        self.query_attended.append(query["attention_mask"].sum())
        self.doc_lengths.append(torch.stack([d["attention_mask"].sum(dim=1) for d in docs]))

    def document_padded(self, lengths: list[int]) -> int:
        """Token positions the encoder computes for one micro-batch's documents: one forward as wide as the
        longest, or chunks of ``document_chunk`` rows each trimmed to its own longest (right padding); packed, the
        real tokens."""
        if self.packed:
            return sum(lengths)
        chunk = self.document_chunk or len(lengths)
        return sum(max(lengths[i:i + chunk]) * len(lengths[i:i + chunk]) for i in range(0, len(lengths), chunk))

    def per_step(self, steps: int) -> dict:
        attended = sum(int(v) for v in self.query_attended)
        rows = [lengths.flatten().tolist() for lengths in self.doc_lengths]
        doc_real = sum(sum(r) for r in rows)
        doc_padded = sum(self.document_padded(r) for r in rows)
        real = self.query_tokens + doc_real
        padded = self.query_tokens + doc_padded
        return {
            "query_tokens": self.query_tokens / steps,
            "query_attended_tokens": attended / steps,
            "document_real_tokens": doc_real / steps,
            "document_collated_tokens": self.doc_collated / steps,
            "document_padded_tokens": doc_padded / steps,
            "real_tokens": real / steps,
            "padded_tokens": padded / steps,
            "padding_share": 1 - real / padded,
            "micro_batches_per_step": self.micro_batches / steps,
        }


def run_config(spec: dict) -> dict:
    """One configuration in this process: train, time, count; returns the result row."""
    import torch
    from transformers import TrainerCallback

    import colbench.loss
    import colbench.train

    cuda = spec["device"] == "cuda"
    warmup, steps, max_seconds = spec["warmup_steps"], spec["steps"], spec["max_seconds"]
    counter = TokenCounter(spec["settings"]["document_chunk"], spec["settings"]["pack_documents"])
    build_kd_loss = colbench.loss.build_kd_loss

    def counted_loss(model, **kwargs):
        loss = build_kd_loss(model, **kwargs)
        loss.register_forward_pre_hook(counter)
        return loss

    # colbench.train imports build_kd_loss when it builds the trainer (or at import, were it moved to the top),
    # so this wraps the pipeline's own loss; a hook that never ran is refused below.
    colbench.loss.build_kd_loss = counted_loss
    if hasattr(colbench.train, "build_kd_loss"):
        colbench.train.build_kd_loss = counted_loss

    class Clock(TrainerCallback):
        """Opens the timed window after the warm-up steps, closes it (and stops training) after ``steps``
        steps or ``max_seconds``; synchronises the GPU only at those two points."""

        def __init__(self) -> None:
            self.t0 = self.t1 = None
            self.timed = 0
            self.model_info = {}
            self.graphs = []  # dynamo's compiled-graph count when the window opens and when it closes

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            inner = getattr(model, "_orig_mod", getattr(model, "module", model))
            encoder = inner[0].auto_model
            n_params = sum(p.numel() for p in inner.parameters())
            n_embed = encoder.get_input_embeddings().weight.numel()
            self.model_info = {"attn_implementation": getattr(encoder.config, "_attn_implementation", None),
                               "parameters": n_params, "parameters_without_embeddings": n_params - n_embed}
            return control

        def sync(self) -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.t0 = self.sync()
                self.graphs.append(dynamo_graphs())
            elif self.t0 is not None and (state.global_step - warmup >= steps or time.perf_counter() - self.t0 > max_seconds):
                self.t1 = self.sync()
                self.graphs.append(dynamo_graphs())
                self.timed = state.global_step - warmup
                control.should_training_stop = True
            return control

    def dynamo_graphs() -> int | None:
        """Graphs dynamo has compiled so far in this process (a counter it keeps; None without torch.compile)."""
        if not setup["args"].get("torch_compile"):
            return None
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    work = Path(spec["work"])
    setup = spec["settings"]
    clock = Clock()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    colbench.train.train(
        kd_dir=spec["kd_dir"], output_dir=work / "model", checkpoints_dir=work / "checkpoints", log_path=work / "log.json",
        base_model=setup["base_model"], model_kwargs=setup["model_kwargs"], loss_kwargs=setup["loss_kwargs"],
        args=setup["args"], seed=setup["seed"], micro_batch=setup["micro_batch"],
        attn_implementation=setup["attn_implementation"], document_chunk=setup["document_chunk"],
        pack_documents=setup["pack_documents"], callbacks=[clock])
    wall = time.perf_counter() - started
    if not clock.timed:
        raise RuntimeError("no timed steps: raise --steps or --max-seconds")
    if not counter.micro_batches:
        raise RuntimeError("the token counter never ran: colbench.train no longer builds its loss through "
                           "colbench.loss.build_kd_loss; update run_config")
    record = json.loads((work / "model" / "colbench_train.json").read_text())
    log = json.loads((work / "log.json").read_text())
    steps_run = warmup + clock.timed
    seconds = (clock.t1 - clock.t0) / clock.timed
    queries_per_step = setup["args"]["per_device_train_batch_size"] * setup["args"]["gradient_accumulation_steps"]
    tokens = counter.per_step(steps_run)
    n = clock.model_info["parameters_without_embeddings"]
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak, peak_source = bf16_peak(device_name)
    graphs = clock.graphs if None not in clock.graphs else None
    return {
        "status": "ok",
        "device_name": device_name,
        "peak_tflops": peak / 1e12,
        "peak_source": peak_source,
        **clock.model_info,
        "precision": record["resolved_precision"],
        "batch_split": record["batch_split"],
        "queries_per_step": queries_per_step,
        "steps_run": steps_run,
        "steps_timed": clock.timed,
        "seconds_per_step": seconds,
        "queries_per_s": queries_per_step / seconds,
        "projected_hours": STUDY_QUERIES / (queries_per_step / seconds) / 3600,
        "tokens_per_step": tokens,
        "model_tflop_per_step": 6 * n * tokens["real_tokens"] / 1e12,
        "mfu": 6 * n * tokens["real_tokens"] / seconds / peak if cuda else None,
        "padded_mfu": 6 * n * tokens["padded_tokens"] / seconds / peak if cuda else None,
        "gpu_memory_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "gpu_memory_reserved_peak_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "dynamo_graphs_in_window": graphs[1] - graphs[0] if graphs else None,
        "losses": {r["step"]: r["loss"] for r in log["records"] if "loss" in r},
        "wall_s": wall,
    }


# ---------------------------------------------------------------------------------------- the parent
RUNNING: list[subprocess.Popen] = []  # the configuration running now, for stop_on_signal


def stop_on_signal(signum, frame) -> None:
    """SIGTERM / SIGINT to the parent (gpu.sh's `timeout`, Ctrl-C): kill the running child's process group, then
    exit. The child runs in a session of its own (so that a timeout can kill its data-loader workers with it), so
    a signal sent to the parent's group never reaches it: without this it would stay on the GPU, compiling or
    training, while the next benchmark runs. The rows finished so far are already in the result file."""
    for child in RUNNING:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    print(f"train_gpu: stopped by signal {signum}; the result file holds the configurations finished", flush=True)
    raise SystemExit(128 + signum)


def run_child(spec: dict, root: Path, timeout: float) -> dict:
    """Run one configuration in a fresh process; a timeout kills its whole process group (dataloader workers too)."""
    spec_file, result_file, log_file = (root / f"{spec['slug']}.{x}" for x in ("spec.json", "result.json", "log"))
    spec_file.write_text(json.dumps(spec))
    # Nothing of an earlier run in the same --work may pass for this one's (a result, a checkpoint to resume).
    result_file.unlink(missing_ok=True)
    shutil.rmtree(spec["work"], ignore_errors=True)
    with open(log_file, "w") as log:
        child = subprocess.Popen([sys.executable, __file__, "--child", str(spec_file), "--child-result", str(result_file)],
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        RUNNING[:] = [child]
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            if result_file.is_file():  # measured and written: only its exit (workers, compile threads) was slow
                return {**json.loads(result_file.read_text()),
                        "note": f"killed at the time limit ({timeout:.0f} s) after writing its result"}
            return {"status": f"timed out after {timeout:.0f} s (budget)", "log_tail": log_file.read_text()[-2000:]}
        finally:
            RUNNING.clear()
    if code or not result_file.is_file():
        return {"status": f"failed (exit {code})", "log_tail": log_file.read_text()[-2000:]}
    return json.loads(result_file.read_text())


def compare_losses(rows: list[dict]) -> None:
    """Add to each row the largest relative difference of its logged losses from the first ok row's."""
    first = next((r for r in rows if r["status"] == "ok"), None)
    for row in rows:
        if row["status"] != "ok" or first is None:
            continue
        common = [s for s in row["losses"] if s in first["losses"]]
        row["loss_max_rel_diff_vs_first"] = (
            max(abs(row["losses"][s] - first["losses"][s]) / abs(first["losses"][s]) for s in common) if common else None)
        row["loss_steps_compared"] = len(common)


def markdown(result: dict) -> str:
    def num(value, fmt):
        return "" if value is None else format(value, fmt)

    lines = [
        "# GPU training benchmark",
        "",
        f"{result['device']}; ModernBERT-{result['model_size']} architecture at random weights, the study's settings "
        f"(params.yaml: {result['n_ways']}-way KD, documents cut at {result['document_length']} tokens, "
        f"optimizer step of {result['queries_per_step']} queries); synthetic MS MARCO-like passages "
        "(see bench/train_gpu.py). Each configuration in its own process; "
        f"{result['warmup_steps']} warm-up steps left out of the timing.",
        "",
        "| configuration | micro-batch x accum. | attention | s/step | queries/s | hours for 808,728 queries | "
        "real / padded tokens per step | model TFLOP/step | MFU (real / padded) | peak GiB (allocated / reserved) | "
        "loss vs first | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["configs"]:
        if row["status"] != "ok":
            lines.append(f"| {row['name']} | | | | | | | | | | | {row['status']} |")
            continue
        split, tok = row["batch_split"], row["tokens_per_step"]
        mfu = f"{row['mfu']:.1%} / {row['padded_mfu']:.1%}" if row["mfu"] is not None else "(cpu)"
        chunks = f", documents {split['document_chunk']} at a time" if split.get("document_chunk") else ""
        chunks += ", packed" if split.get("pack_documents") else ""
        memory = (f"{row['gpu_memory_peak_gib']:.1f} / {row['gpu_memory_reserved_peak_gib']:.1f}"
                  if row.get("gpu_memory_reserved_peak_gib") is not None else num(row["gpu_memory_peak_gib"], ".1f"))
        status = "ok"
        if row.get("dynamo_graphs_in_window") is not None:
            status += f"; {row['dynamo_graphs_in_window']} graphs compiled in the timed window"
        if row.get("note"):
            status += f"; {row['note']}"
        lines.append(
            f"| {row['name']} | {split['micro_batch']} x {split['accumulation']}{chunks} | {row['attn_implementation']} | "
            f"{row['seconds_per_step']:.3f} | {row['queries_per_s']:.1f} | {row['projected_hours']:.1f} | "
            f"{tok['real_tokens']:,.0f} / {tok['padded_tokens']:,.0f} | {row['model_tflop_per_step']:.1f} | {mfu} | "
            f"{memory} | {num(row.get('loss_max_rel_diff_vs_first'), '.1e')} | {status} |"
        )
    best = result.get("best")
    if not result["complete"]:
        lines += ["", f"**Incomplete**: {len(result['configs'])} of {result['configs_planned']} configurations "
                      "so far (the sweep was stopped, or is still running)."]
    lines += [
        "",
        f"Target: {TARGET_QUERIES_PER_S} queries/s ({STUDY_QUERIES / TARGET_QUERIES_PER_S / 3600:.1f} h for the epoch). "
        + (f"Best: {best['name']}, {best['queries_per_s']:.1f} queries/s ({best['queries_per_s'] / TARGET_QUERIES_PER_S:.0%} "
           "of the target)." if best else "No configuration finished."),
        "",
        "Tokens per optimizer step, counted on the collated batches the loss receives: real = every query token "
        "(32 per query, [MASK] expansion included: computed and scored) + document tokens with attention mask 1; "
        "padded = what the encoder computes (the 32 document columns run as one batch padded to the widest, or "
        "in chunks of `document_chunk` rows, each as wide as its longest). "
        "Model FLOPs = 6 x parameters (without the token-embedding matrix) x real tokens"
        + (f"; MFU against {result['peak_tflops']:.0f} TFLOP/s ({result['peak_source']}). " if result["peak_tflops"] else ". ")
        + "Loss vs first: largest relative difference of the losses logged at step 1 and every "
        f"{LOG_EVERY} steps from the first configuration's (same data and initial weights).",
        "",
    ]
    tok = next((r["tokens_per_step"] for r in result["configs"] if r["status"] == "ok"), None)
    if tok:
        lines.insert(-1, f"Per step (first configuration): {tok['query_tokens']:,.0f} query tokens "
                         f"({tok['query_attended_tokens']:,.0f} attended), {tok['document_real_tokens']:,.0f} real "
                         f"document tokens, {tok['document_padded_tokens']:,.0f} computed: "
                         f"{tok['padding_share']:.0%} of the computed tokens are padding.")
    return "\n".join(lines) + "\n"


def set_environment(*, smoke: bool) -> None:
    """Offline, one tokenizer thread as `make study` trains (the Makefile exports TOKENIZERS_PARALLELISM=false);
    a smoke run on one thread (on a small shared CPU, two OpenMP threads waiting on each other made steps 15x
    slower)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if smoke:
        os.environ["OMP_NUM_THREADS"] = "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, help="where train_gpu.json / .md go (default reports/bench; "
                                                      f"with --smoke {SMOKE_OUT})")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, 4-way, 2 timed steps, output to a "
                                                             "temporary folder: checks that it runs")
    parser.add_argument("--sweep", action="store_true", help="run the list of configurations (module docstring)")
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps at most, per configuration")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="timed window per configuration at most "
                                                                         "(in --sweep: the torch.compile row's)")
    parser.add_argument("--sweep-max-seconds", type=float, default=8.0,
                        help="timed window of each --sweep row before torch.compile's, at most: leaves compile its share")
    parser.add_argument("--budget", type=float, default=260.0, help="seconds for all configurations together; "
                                                                    "a configuration still running then is killed")
    parser.add_argument("--micro-batch", type=int, help="train.micro_batch (queries per forward pass)")
    parser.add_argument("--attn-implementation", choices=("sdpa", "eager", "flash_attention_2"))
    parser.add_argument("--document-chunk", type=int, help="train.document_chunk (documents per forward pass)")
    parser.add_argument("--pack-documents", action="store_true", help="train.pack_documents (no padding computed outside attention)")
    parser.add_argument("--optim", choices=("adamw_torch", "adamw_torch_fused"))
    parser.add_argument("--torch-compile", action="store_true")
    parser.add_argument("--workers", type=int, help="train.args.dataloader_num_workers (default: params.yaml's)")
    parser.add_argument("--model-size", choices=("base", "tiny"), default="base")
    parser.add_argument("--work", type=Path, help="folder for the model and data (default: a new temporary one)")
    parser.add_argument("--tokenizer", type=Path, default=REPO / "tests/fixtures/pylate/modernbert/base",
                        help="a local tokenizer folder (offline stand-in for ModernBERT's)")
    parser.add_argument("--run-id", help="recorded in the result (bench/gpu.sh: study_gpu.py then uses no other run's)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: run one spec
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    set_environment(smoke=options.smoke)

    if options.child:
        from colbench.atomic import write_json

        result = run_config(json.loads(options.child.read_text()))
        write_json(options.child_result, result)  # atomic: the parent may read it after killing this process
        return 0

    if options.smoke:
        options.device, options.model_size = "cpu", "tiny"
        options.steps, options.warmup_steps = min(options.steps, 2), min(options.warmup_steps, 1)
    out_dir = options.out_dir or (SMOKE_OUT if options.smoke else REPO / "reports" / "bench")
    if options.smoke and out_dir.resolve() == (REPO / "reports" / "bench").resolve():
        parser.error("--smoke numbers must not replace the committed reports/bench results: choose another --out-dir")
    if options.steps < 1 or options.warmup_steps < 1:
        parser.error("--steps and --warmup-steps must be at least 1")
    import torch

    cuda = options.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print(f"train_gpu: no CUDA device visible (torch {torch.__version__}). Run it on a GPU machine, or "
              "smoke-test it with --smoke.", file=sys.stderr)
        return 2

    from colbench.atomic import write_json, write_text
    from colbench.provenance import provenance

    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    started = time.monotonic()
    if options.sweep:
        configs = sweep_configs()
    else:
        levers = {"micro_batch": options.micro_batch, "attn_implementation": options.attn_implementation,
                  "document_chunk": options.document_chunk, "pack_documents": options.pack_documents or None,
                  "optim": options.optim, "torch_compile": options.torch_compile or None, "workers": options.workers}
        levers = {k: v for k, v in levers.items() if v is not None}
        configs = [(", ".join(f"{k}={v}" for k, v in levers.items()) or "params.yaml (4 x 4)", levers)]

    root = options.work or Path(tempfile.mkdtemp(prefix="colbench-train-gpu-"))
    root.mkdir(parents=True, exist_ok=True)
    base = write_modernbert_base(root / f"modernbert-{options.model_size}", options.tokenizer, options.model_size)
    first = settings({}, steps=options.steps, warmup=options.warmup_steps, cuda=cuda, base_model=str(base),
                     smoke=options.smoke)
    step_queries = first["args"]["per_device_train_batch_size"] * first["args"]["gradient_accumulation_steps"]
    n_queries = (options.warmup_steps + options.steps + 1) * step_queries
    kd = write_synthetic_kd(root / f"kd-{n_queries}", n_queries=n_queries, n_documents=min(20_000, n_queries * 32),
                            n_candidates=first["loss_kwargs"]["n_ways"], seed=0)
    print(f"train_gpu: data and model ready in {time.monotonic() - started:.0f} s ({root})", flush=True)

    # The children find colbench where this process did (an install, or src/ on PYTHONPATH on the GPU machine).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    if not cuda:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run: the trainer would take a visible GPU
    run_provenance = provenance(REPO)

    def save(rows: list[dict], complete: bool) -> dict:
        """Write the result so far: after every configuration (``complete`` false until the last), so that a run
        stopped early (gpu.sh's timeout, the machine's end) keeps its finished rows."""
        compare_losses(rows)
        ok = [r for r in rows if r["status"] == "ok"]
        best = max(ok, key=lambda r: r["queries_per_s"]) if ok else None
        result = {
            "bench": "train_gpu",
            "run_id": options.run_id,
            "complete": complete,
            "configs_planned": len(configs),
            # The children name the device and choose the MFU peak by its name (each measures its own memory).
            "device": ok[0]["device_name"] if ok else "cpu (smoke: numbers mean nothing)" if not cuda else "cuda (no configuration finished)",
            "model_size": options.model_size,
            "architecture": "ModernBERT (random init, offline config)",
            "params_file": "params.yaml",
            "n_ways": first["loss_kwargs"]["n_ways"],
            "queries_per_step": step_queries,
            "document_length": first["model_kwargs"]["document_length"],
            "warmup_steps": options.warmup_steps,
            "peak_tflops": ok[0]["peak_tflops"] if ok and cuda else None,
            "peak_source": ok[0]["peak_source"] if ok and cuda else None,
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset"),
            "target_queries_per_s": TARGET_QUERIES_PER_S,
            "study_queries": STUDY_QUERIES,
            "configs": rows,
            "best": {"name": best["name"], "queries_per_s": best["queries_per_s"],
                     "projected_hours": best["projected_hours"]} if best else None,
            "wall_s": time.monotonic() - started,
            "provenance": run_provenance,
        }
        write_json(out_dir / "train_gpu.json", result)
        write_text(out_dir / "train_gpu.md", markdown(result))
        return result

    rows = []
    save(rows, complete=False)  # from now on the file in out_dir is this run's
    for i, (name, levers) in enumerate(configs):
        left = options.budget - (time.monotonic() - started)
        if left < 30:  # not enough for a child to even import torch and build the model
            rows.append({"name": name, "levers": levers, "status": "skipped (budget spent)"})
            continue
        setup = settings(levers, steps=options.steps, warmup=options.warmup_steps, cuda=cuda, base_model=str(base),
                         smoke=options.smoke)
        # In a sweep the rows before torch.compile's time a shorter window, so that compile keeps a fair share of
        # the budget for its start (module docstring); the window is long enough for 10 to 40 steps.
        short = options.sweep and not levers.get("torch_compile")
        spec = {"slug": f"config{i}", "device": options.device, "settings": setup, "kd_dir": str(kd),
                "work": str(root / f"config{i}"), "steps": options.steps, "warmup_steps": options.warmup_steps,
                "max_seconds": min(options.max_seconds, options.sweep_max_seconds) if short else options.max_seconds}
        print(f"train_gpu: {name} ({left:.0f} s of budget left) ...", flush=True)
        row = {"name": name, "levers": levers, "overrides": setup["overrides"], **run_child(spec, root, left)}
        if row["status"] == "ok":
            print(f"  {row['seconds_per_step']:.3f} s/step, {row['queries_per_s']:.1f} queries/s, "
                  f"{row['tokens_per_step']['real_tokens']:,.0f} real / {row['tokens_per_step']['padded_tokens']:,.0f} "
                  f"padded tokens per step", flush=True)
        else:
            print(f"  {row['status']}\n{row.get('log_tail', '')[-600:]}", flush=True)
        rows.append(row)
        save(rows, complete=False)
    result = save(rows, complete=True)
    if not options.work:
        shutil.rmtree(root, ignore_errors=True)  # the model, the data and every configuration's checkpoint
    print(markdown(result))
    print(f"train_gpu: wrote {out_dir / 'train_gpu.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
