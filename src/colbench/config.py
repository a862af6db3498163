"""Read and validate ``params.yaml`` once, into typed sections, before any long work starts.

Every stage calls :func:`load_params` first. A wrong key, a wrong type or a value out of range stops the
run with an :class:`~colbench.errors.InputError` that names the key (``train.args.learning_rate``) and
says what is allowed. Functions elsewhere in ``colbench`` never read params.yaml: the notebooks pass
these sections on as explicit arguments.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from colbench.errors import InputError, exit_with

# Cutoffs every evaluation reports whatever evaluate.k_values says (NDCG@10, Recall@100, ...): retrieve.k must reach them.
ALWAYS_REPORTED_CUTOFFS = (10, 100)


def _check(predicate, rule: str) -> dict:
    """Field metadata: ``predicate(value)`` must hold; ``rule`` is shown when it does not."""
    return {"check": predicate, "rule": rule}


def _positive(rule: str = "a positive number") -> dict:
    return _check(lambda v: v > 0, rule)


def _seed() -> dict:  # numpy's and torch's seeders take 0 .. 2**32 - 1
    return _check(lambda v: 0 <= v < 2**32, "from 0 to 4294967295")


def _auto_or_bool(value: Any) -> bool:
    return value == "auto" or isinstance(value, bool)


@dataclass(frozen=True)
class Base:
    seed: int = field(metadata=_seed())


@dataclass(frozen=True)
class Layout:
    """Where each stage writes, relative to the pipeline's folder (the one holding its params.yaml): the
    outputs dvc.yaml declares for every stage."""

    kd: str = "data/kd"  # prepared distillation set (ms-marco-en-bge schema, parquet)
    datasets: str = "data/datasets"  # prepared BEIR evaluation sets, one folder each
    model: str = "models/colbert"  # the evaluated checkpoint (trained here, or a pointer to an existing one)
    checkpoints: str = "models/checkpoints"  # intermediate training checkpoints, kept for resuming
    embeddings: str = "data/embeddings"  # token-embedding stores, one per dataset
    # encode's finished shards while it runs, outside data/embeddings: DVC deletes a stage's outputs before it
    # reruns the stage, and a killed encode resumes from these (removed once the stores are written).
    encode_shards: str = "data/encode_shards"
    indexes: str = "data/indexes"  # Voyager indexes, one per dataset
    runs: str = "data/runs"  # TREC run files, one per dataset
    reports: str = "reports"  # tables, figures, metrics, executed notebooks


LAYOUT = Layout()


@dataclass(frozen=True)
class KDSource:
    source: str
    revision: str | None = None
    max_samples: int | None = field(default=None, metadata=_check(lambda v: v is None or v > 0, "null or > 0"))
    teacher: str | None = None  # builtin:python-docs only: the bi-encoder giving teacher scores
    builtin: dict[str, int] = field(default_factory=dict)  # builtin:python-docs only: sizes


@dataclass(frozen=True)
class DatasetSource:
    source: str
    split: str = "test"


@dataclass(frozen=True)
class Prepare:
    kd: KDSource
    datasets: dict[str, DatasetSource] = field(metadata=_check(bool, "at least one evaluation dataset"))


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int = field(metadata=_positive())
    query_length: int = field(metadata=_positive())
    document_length: int = field(metadata=_positive())
    query_prefix: str
    document_prefix: str
    query_expansion: bool
    attend_to_expansion_tokens: bool
    skiplist: Literal["punctuation", "none"]


@dataclass(frozen=True)
class LossConfig:
    n_ways: int = field(metadata=_check(lambda v: v >= 2, "at least 2 (a positive and a negative)"))
    normalize_scores: bool
    temperature: float = field(metadata=_positive())
    masked_positions: Literal["zero", "exclude"]
    teacher_temperature: float | None = field(default=None, metadata=_check(lambda v: v > 0, "null or > 0"))


@dataclass(frozen=True)
class TrainArgs:
    learning_rate: float = field(metadata=_check(lambda v: 0 < v < 1, "between 0 and 1"))
    num_train_epochs: float = field(metadata=_positive())
    max_steps: int = field(metadata=_check(lambda v: v == -1 or v > 0, "-1 (whole epochs) or > 0"))
    per_device_train_batch_size: int = field(metadata=_positive())
    gradient_accumulation_steps: int = field(metadata=_positive())
    warmup_ratio: float = field(metadata=_check(lambda v: 0 <= v < 1, "in [0, 1)"))
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"]
    weight_decay: float = field(metadata=_check(lambda v: v >= 0, ">= 0"))
    max_grad_norm: float = field(metadata=_positive())
    bf16: bool | str = field(metadata=_check(_auto_or_bool, "true, false or auto"))
    tf32: bool | str = field(metadata=_check(_auto_or_bool, "true, false or auto"))
    logging_steps: int = field(metadata=_positive())
    save_steps: int = field(metadata=_positive())
    # The trainer deletes the oldest checkpoint before the new one is marked complete: with 1 kept, a kill in between
    # leaves nothing to resume from.
    save_total_limit: int = field(metadata=_check(lambda v: v >= 2, ">= 2 (a kill while saving must leave one to resume)"))
    # Speed only, the same update (see README, "Run the full study"):
    optim: Literal["adamw_torch", "adamw_torch_fused"] = "adamw_torch"
    torch_compile: bool = False
    dataloader_num_workers: int = field(default=0, metadata=_check(lambda v: v >= 0, ">= 0"))


@dataclass(frozen=True)
class TrainEval:
    dataset: str | None
    steps: int = field(metadata=_positive())


@dataclass(frozen=True)
class Canary:
    reference: Literal["study"] | None  # a published training curve (colbench/reference/), null: no check
    tolerance: float = field(default=0.25, metadata=_check(lambda v: 0 < v < 1, "in (0, 1)"))
    window: int = field(default=500, metadata=_positive())
    from_step: int = field(default=500, metadata=_check(lambda v: v >= 0, ">= 0"))


@dataclass(frozen=True)
class Train:
    seed: int = field(metadata=_seed())  # data order and the projection's initialisation; base.seed seeds everything else
    checkpoint: str | None
    base_model: str
    model: ModelConfig
    loss: LossConfig
    args: TrainArgs
    distributed: Literal["none", "ddp"]
    num_processes: int = field(metadata=_positive())
    eval: TrainEval
    init_checkpoint: str | None = None
    canary: Canary | None = None
    micro_batch: int | None = field(default=None, metadata=_check(lambda v: v > 0, "null or > 0"))
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = None
    document_chunk: int | None = field(default=None, metadata=_check(lambda v: v > 0, "null or > 0"))
    pack_documents: bool = False
    model_revision: str | None = None  # hub commit (branch, tag) of the hub model used; None: the cached one, else latest

    def hub_model(self) -> tuple[str, str]:
        """``(params key, name)`` of the model this section starts from: the checkpoint to evaluate, the one to
        train further, or the base encoder."""
        if self.checkpoint:
            return "train.checkpoint", self.checkpoint
        if self.init_checkpoint:
            return "train.init_checkpoint", self.init_checkpoint
        return "train.base_model", self.base_model


@dataclass(frozen=True)
class Encode:
    batch_size: int = field(metadata=_positive())
    dtype: Literal["float16", "float32"]
    autocast_bf16: bool
    document_length: int | None = field(default=None, metadata=_check(lambda v: v > 0, "null or > 0"))
    query_expansion: Literal["keep", "drop"] = "keep"


@dataclass(frozen=True)
class Index:
    space: Literal["cosine", "inner_product", "euclidean"]
    M: int = field(metadata=_check(lambda v: v >= 2, ">= 2"))
    ef_construction: int = field(metadata=_positive())
    storage: Literal["float32", "float8", "e4m3"]
    num_threads: int = field(default=-1, metadata=_check(lambda v: v == -1 or v > 0, "-1 (all cores) or > 0"))


@dataclass(frozen=True)
class Retrieve:
    mode: Literal["hnsw", "exact"]
    k: int = field(metadata=_positive())
    ef_search: int = field(metadata=_positive())
    tokens_per_query_token: int = field(metadata=_positive())
    maxsim_dtype: Literal["bfloat16", "float32"]
    block_tokens: int = field(metadata=_check(lambda v: v >= 1024, ">= 1024"))
    tradeoff_ef_search: list[int] = field(metadata=_check(lambda v: all(x > 0 for x in v), "positive integers"))
    device: Literal["auto", "cpu", "cuda"] = "cpu"


@dataclass(frozen=True)
class Evaluate:
    k_values: list[int] = field(metadata=_check(lambda v: v and all(x > 0 for x in v), "positive integers"))
    ignore_identical_ids: dict[str, bool]
    bootstrap_samples: int = field(metadata=_check(lambda v: v >= 100, ">= 100"))
    confidence: float = field(metadata=_check(lambda v: 0.5 <= v < 1, "in [0.5, 1)"))


@dataclass(frozen=True)
class Report:
    reference_ndcg10: dict[str, float]
    reference_label: str = "study"
    baseline: str | None = None
    per_query_examples: int = field(default=5, metadata=_positive())


@dataclass(frozen=True)
class Params:
    base: Base
    prepare: Prepare
    train: Train
    encode: Encode
    index: Index
    retrieve: Retrieve
    evaluate: Evaluate
    report: Report
    file: Path = field(default=Path("params.yaml"), compare=False)

    @property
    def datasets(self) -> list[str]:
        """Names of the evaluation datasets, in params order."""
        return list(self.prepare.datasets)

    def path(self, name: str) -> Path:
        """Where output ``name`` of `Layout` lives for this pipeline (relative to the params file's folder)."""
        return self.file.parent / getattr(LAYOUT, name)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; DVC refuses the file. Refuse it here, by line."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: the parent class resolves it
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the parent class refuses it
            line = key_node.start_mark.line + 1
            if key in seen:
                raise InputError(f"{self.name}:{line}: the key {key!r} appears twice in one section (first on line "
                                 f"{seen[key]}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate a params file. Raises :class:`InputError` naming the first bad key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: params file not found. Run from the folder holding params.yaml (or demo/).")
    try:
        with path.open(encoding="utf-8") as stream:  # a stream: the loader's messages name the file
            raw = yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise InputError(f"{path}: the file must be a mapping of sections (base:, prepare:, train:, ...), got a "
                         f"{type(raw).__name__}.")
    params = _build(Params, {**(raw or {}), "file": path}, prefix="", source=path)
    _cross_check(params, path)
    return params


def _cross_check(params: Params, source: Path) -> None:
    """Checks that span sections: every dataset named in one section exists in the others."""
    names = set(params.datasets)
    missing = names - set(params.evaluate.ignore_identical_ids)
    if missing:
        raise InputError(
            f"{source}: evaluate.ignore_identical_ids has no entry for {sorted(missing)}: add "
            "false (keep a hit whose id is the query's, as the study's PyLate evaluation did) or true (drop it, as "
            "BEIR does); the report shows the other protocol beside it."
        )
    # A reference for a dataset this run does not prepare is kept: the study's four stay when a run drops one.
    for name, value in params.report.reference_ndcg10.items():
        if not 1 < value <= 100:
            raise InputError(f"{source}: report.reference_ndcg10.{name} is {value}: give NDCG@10 in points, as the "
                             "report shows it (above 1 and at most 100; the study's FiQA: 39.86), not as a fraction.")
    eval_set = params.train.eval.dataset
    if eval_set not in (None, "nanobeir") and eval_set not in names:
        raise InputError(
            f"{source}: train.eval.dataset is {eval_set!r}, which is not in prepare.datasets "
            f"({sorted(names)}): use one of those, 'nanobeir' or null."
        )
    if params.prepare.kd.source.startswith("builtin:") and not params.prepare.kd.teacher:
        raise InputError(f"{source}: prepare.kd.teacher is required with prepare.kd.source {params.prepare.kd.source}.")
    if params.train.attn_implementation == "flash_attention_2" and not params.train.model.attend_to_expansion_tokens:
        # sentence-transformers refuses the combination (FlashAttention cannot mask the expansion positions).
        raise InputError(f"{source}: train.attn_implementation flash_attention_2 needs "
                         "train.model.attend_to_expansion_tokens: true, which is another model than the study's; "
                         "use sdpa (null) with the study's settings.")
    if params.train.pack_documents and params.train.attn_implementation:
        raise InputError(f"{source}: train.pack_documents brings its own attention (per document, packed); set "
                         "train.attn_implementation to null, or pack_documents to false.")
    if params.train.checkpoint and params.train.init_checkpoint:
        raise InputError(f"{source}: train.checkpoint (evaluate it, train nothing) and train.init_checkpoint (train "
                         "it further) are both set: keep one.")
    args, processes = params.train.args, params.train.num_processes
    step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    if step % ((params.train.micro_batch or args.per_device_train_batch_size) * processes):
        raise InputError(f"{source}: train.micro_batch ({params.train.micro_batch}) x train.num_processes ({processes}) "
                         f"does not divide the optimizer step of {step} queries (train.args.per_device_train_batch_size "
                         "x gradient_accumulation_steps): choose values whose product divides it.")
    r = params.retrieve
    deepest = max([*params.evaluate.k_values, *ALWAYS_REPORTED_CUTOFFS])
    if r.k < deepest:
        raise InputError(f"{source}: retrieve.k is {r.k}, but metrics are computed down to rank {deepest} "
                         f"(evaluate.k_values and the always reported @{'/@'.join(map(str, ALWAYS_REPORTED_CUTOFFS))}): "
                         f"set retrieve.k to at least {deepest}.")
    # Voyager searches each query token with ef = max(ef_search, tokens_per_query_token) (an HNSW search needs
    # ef >= the neighbours it returns): a smaller value would be reported as a setting it never ran.
    for key, values in (("ef_search", [r.ef_search]), ("tradeoff_ef_search", r.tradeoff_ef_search)):
        low = [v for v in values if v < r.tokens_per_query_token]
        if low:
            raise InputError(f"{source}: retrieve.{key} has {low[0]}, below retrieve.tokens_per_query_token "
                             f"({r.tokens_per_query_token}): the index searches with ef = max(ef_search, "
                             "tokens_per_query_token), so it would run as the latter. Use values of at least "
                             f"{r.tokens_per_query_token}, or lower retrieve.tokens_per_query_token as well.")
    if params.train.distributed == "none" and params.train.num_processes != 1:
        raise InputError(f"{source}: train.num_processes is {params.train.num_processes} but train.distributed is none: set ddp.")


def _build(cls: type, data: Any, prefix: str, source: Path) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"{source}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(
            f"{source}: unknown key {prefix}{unknown[0]}; allowed keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {sorted(fields)}."
        )
    values = {}
    for name, spec in fields.items():
        key = f"{prefix}{name}"
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise InputError(f"{source}: missing key {key}.")
            continue
        value = _coerce(hints[name], data[name], key, source)
        check = spec.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise InputError(f"{source}: {key} is {data[name]!r}; it must be {spec.metadata['rule']}.")
        values[name] = value
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str, source: Path) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key, source)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0])
    if origin is Literal:
        if value not in args:
            raise InputError(f"{source}: {key} is {value!r}; allowed values: {', '.join(map(repr, args))}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise InputError(f"{source}: {key} must be a list, got {value!r}.")
        return [_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{source}: {key} must be a mapping, got {value!r}.")
        return {str(k): _coerce(args[1], v, f"{key}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.", source)
    if hint is Path:
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"{source}: {key} must be true or false, got {value!r}.")
        return value
    if hint in (int, float):
        # YAML reads 8e-5 as a string (it wants 8.0e-5); accept it as a number, refuse anything else.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InputError(f"{source}: {key} must be a number, got {value!r}.") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{source}: {key} must be a number, got {value!r}.")
        if not math.isfinite(value):
            raise InputError(f"{source}: {key} must be a finite number, got {value!r}.")
        if hint is int:
            if float(value) != int(value):
                raise InputError(f"{source}: {key} must be a whole number, got {value!r}.")
            return int(value)
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise InputError(f"{source}: {key} must be a non-empty string, got {value!r}.")
        return value
    raise TypeError(f"unsupported type {hint} for {key}")  # a bug in this module, not bad input


def main() -> None:
    """``python -m colbench.config [params.yaml]``: validate a params file and exit non-zero if it is wrong."""
    import sys

    try:
        params = load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
    except InputError as exc:
        exit_with(exc)
    print(f"{params.file}: ok ({len(params.datasets)} evaluation datasets: {', '.join(params.datasets)})")


if __name__ == "__main__":
    main()
