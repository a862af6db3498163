"""The study's ColBERT model: build it from a base encoder, load checkpoints, fingerprint it.

Everything here is sentence-transformers 6.2's native late-interaction machinery
(`MultiVectorEncoder` with `Transformer` -> `Dense` -> `MultiVectorMask` -> `Normalize`); this module
only chooses the settings that make it behave exactly as PyLate 1.6 builds a ColBERT:

- `[Q] ` / `[D] ` are new vocabulary entries (ids appended after the base vocabulary, embedding rows
  added by `resize_token_embeddings`), registered as special, non-normalised tokens so that the
  model's prompts (`prompts={"query": "[Q] ", "document": "[D] "}`) tokenize to exactly the one id
  PyLate inserts after `[CLS]`;
- queries are padded to `query_length` with `[MASK]` (the `fixed` query-expansion strategy), the
  expansion positions are scored but not attended to unless `attend_to_expansion_tokens`;
- documents are truncated at `document_length` tokens (prefix and special tokens included);
- punctuation is dropped from document scoring (the skiplist), never from queries;
- token vectors are projected hidden -> `embedding_dim` without bias, then L2-normalised.

With the same seed, the projection and the new embedding rows are drawn in PyLate's order (the
base encoder is loaded, the projection created, then the embedding matrix resized), so a model built
here from a base equals the one PyLate builds from it (checked in tests/test_parity.py).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import string
from pathlib import Path
from typing import Any

import torch
from torch import nn

from colbench import hub
from colbench.errors import InputError

# Deferred imports of sentence_transformers keep `import colbench.model` cheap for callers that only need
# `resolve_model_source`.

SKIPLISTS = {"punctuation": string.punctuation, "none": ""}


def resolve_model_source(name: str) -> str:
    """Turn a model param into something loadable.

    `pkg:<python_module>` -> the folder that module's `get_model_path()` returns (how the demo ships
    its base model inside a pip package); an existing local path -> itself; anything else is taken
    as a Hugging Face hub id and returned unchanged. A path-looking value that does not exist, or a
    package that is not installed, raises InputError.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"model name must be a non-empty string (hub id, local folder or pkg:<module>), got {name!r}")
    name = name.strip()
    if name.startswith("pkg:"):
        module_name = name[len("pkg:") :]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise InputError(
                f"model {name!r}: Python package {module_name!r} is not installed; install it "
                f"(pip install {module_name.replace('_', '-')}) or name a hub id / local folder instead"
            ) from exc
        getter = getattr(module, "get_model_path", None)
        if getter is None:
            raise InputError(f"model {name!r}: module {module_name!r} has no get_model_path(); it does not ship a model")
        path = str(getter())
        if not Path(path).is_dir():
            raise InputError(f"model {name!r}: {module_name}.get_model_path() returned {path!r}, which is not a folder")
        return path
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    if _looks_like_path(name):
        raise InputError(f"model {name!r}: no such local folder (check the path, relative to where the stage runs)")
    return name


def _looks_like_path(name: str) -> bool:
    # A hub id is "name" or "org/name"; anything else (absolute, ./, ~, several slashes) is a path.
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _local_folder(name: str, what: str, revision: str | None = None) -> tuple[str, str | None]:
    """The folder of model ``name`` (``what``: the params key naming it) and its hub commit: a local folder (no
    commit), or the hub snapshot at ``revision``."""
    source = resolve_model_source(name)
    if Path(source).is_dir():
        hub.refuse_revision_for_folder(revision, what, name)
        return source, None
    folder = hub.model_snapshot(source, what, revision)
    return folder, Path(folder).name  # <cache>/snapshots/<commit>


def _transformer_folder(folder: str) -> str:
    """The folder of the Hugging Face encoder inside `folder`.

    A sentence-transformers folder (modules.json) may keep its Transformer in a subfolder and adds
    Pooling / Normalize modules a ColBERT does not use: only the Transformer is taken.
    """
    modules_file = Path(folder) / "modules.json"
    if not modules_file.is_file():
        return folder
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    for entry in modules:
        if str(entry.get("type", "")).endswith("Transformer"):
            return str(Path(folder) / entry.get("path", ""))
    raise InputError(f"base model {folder!r}: modules.json lists no Transformer module to build a ColBERT from")


def _skiplist_words(skiplist: str | list[str]) -> list[str]:
    # params.yaml names a list ("punctuation" or "none", validated by colbench.config); callers may pass words.
    return list(skiplist) if isinstance(skiplist, (list, tuple)) else list(SKIPLISTS[skiplist])


def build_colbert(
    base_model: str,
    *,
    embedding_dim: int = 128,
    query_length: int = 32,
    document_length: int = 180,
    query_prefix: str = "[Q] ",
    document_prefix: str = "[D] ",
    query_expansion: bool = True,
    attend_to_expansion_tokens: bool = False,
    skiplist: str | list[str] = "punctuation",
    seed: int = 42,
    device: str | None = None,
    attn_implementation: str | None = None,
    revision: str | None = None,
):
    """Build the study's ColBERT (an untrained projection) from a plain base encoder.

    `base_model` is a hub id (at ``revision``, see `colbench.hub.model_snapshot`), a local folder (Hugging Face or
    sentence-transformers layout) or `pkg:<module>`; the hub commit used is the model's
    ``colbench_revision`` (None for a folder). The result is a `sentence_transformers.MultiVectorEncoder` whose
    saved folder reloads with `MultiVectorEncoder(path)` (native config, no PyLate needed). Randomness (projection,
    new embedding rows) is drawn from `seed` in a forked RNG, so the caller's RNG state is untouched.
    ``attn_implementation`` picks transformers' attention kernel (None: its default, sdpa): another speed, the
    same numbers to float rounding.
    """
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask
    from transformers import AddedToken

    words = _skiplist_words(skiplist)
    snapshot, commit = _local_folder(base_model, "train.base_model", revision)
    folder = _transformer_folder(snapshot)

    expansion = (
        {"strategy": "fixed", "attend": bool(attend_to_expansion_tokens), "length": query_length}
        if query_expansion
        else None
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # Same draw order as PyLate: base loaded, projection created, then new embedding rows.
        transformer = Transformer(
            folder,
            # With expansion the query width is the expansion length (as a PyLate checkpoint loads);
            # without it, queries are only truncated at query_length, PyLate's behaviour.
            query_length=None if expansion else query_length,
            document_length=document_length,
            query_expansion=expansion,
            model_kwargs={"attn_implementation": attn_implementation} if attn_implementation else None,
        )
        check_lengths(transformer, "train.model", query_length=query_length, document_length=document_length)
        hidden = transformer.get_embedding_dimension()
        dense = Dense(
            in_features=hidden,
            out_features=embedding_dim,
            bias=False,
            activation_function=nn.Identity(),
            module_input_name="token_embeddings",
        )
        tokenizer = transformer.tokenizer
        prefixes = [p for p in (query_prefix, document_prefix) if p]
        if prefixes:
            # Special and non-normalised: a lowercasing tokenizer would otherwise never match "[Q] ".
            tokenizer.add_tokens([AddedToken(p, normalized=False, special=True) for p in prefixes], special_tokens=True)
            transformer.auto_model.resize_token_embeddings(len(tokenizer))
    if tokenizer.mask_token_id is not None:
        # PyLate pads with [MASK]; padded positions are never attended or scored, so this only keeps
        # the token ids of padded batches identical to PyLate's.
        tokenizer.pad_token = tokenizer.mask_token

    prompts = {"query": query_prefix or "", "document": document_prefix or ""}
    model = MultiVectorEncoder(
        modules=[transformer, dense, MultiVectorMask(skiplist_words=words), Normalize(module_input_name="token_embeddings")],
        prompts=prompts,
        device=device,
        similarity_fn_name="maxsim",
    )
    model.colbench_source = str(base_model)
    model.colbench_revision = commit
    return model


def colbert_settings(model) -> dict[str, Any]:
    """The `train.model` settings a ColBERT was built with, read back from its modules (the names of
    `build_colbert`'s keywords): what a loaded checkpoint fixes and params cannot change."""
    transformer, mask = model[0], next((m for m in model if hasattr(m, "skiplist_words")), None)
    expansion = transformer.query_expansion
    words = list(getattr(mask, "skiplist_words", None) or [])
    skiplist: str | list[str] = ("punctuation" if sorted(words) == sorted(string.punctuation)
                                 else "none" if not words else words)
    return {
        "embedding_dim": int(model.get_embedding_dimension()),
        "query_length": int(expansion["length"] if expansion else transformer.query_length),
        "document_length": int(transformer.document_length),
        "query_prefix": model.prompts.get("query", ""),
        "document_prefix": model.prompts.get("document", ""),
        "query_expansion": expansion is not None,
        "attend_to_expansion_tokens": bool(expansion and expansion.get("attend")),
        "skiplist": skiplist,
    }


def load_colbert(path_or_id: str, device: str | None = None, document_length: int | None = None,
                 attn_implementation: str | None = None, revision: str | None = None, what: str = "train.checkpoint"):
    """Load a ColBERT checkpoint: one saved by this repo, a PyLate checkpoint, or a pointer folder.

    ``document_length`` (params.yaml encode.document_length) overrides the tokens a document keeps, for
    evaluating at another length than the model was trained with; None keeps the model's.

    A folder holding `checkpoint.json` = `{"checkpoint": "<hub id or path>", "revision": <commit or null>}` stands
    for that checkpoint (relative paths are taken relative to the pointer folder first), at the pointer's revision
    (``revision`` is for a hub id named directly). Hub ids are served at ``revision`` by
    `colbench.hub.model_snapshot` (the HF cache, or a download when online); otherwise InputError says how to
    provide them (``what``: the params key naming the checkpoint). The hub commit used is the model's ``colbench_revision``. A folder that is not a
    sentence-transformers / PyLate checkpoint is refused.
    """
    from sentence_transformers import MultiVectorEncoder

    seen: list[str] = []
    current = str(path_or_id)
    while True:
        source = resolve_model_source(current)
        pointer = Path(source) / "checkpoint.json"
        if not pointer.is_file():
            break
        if source in seen or len(seen) >= 8:
            raise InputError(f"checkpoint pointer loop: {' -> '.join(seen + [source])}")
        if not seen:
            hub.refuse_revision_for_folder(revision, what, str(path_or_id))
        seen.append(source)
        try:
            entry = json.loads(pointer.read_text(encoding="utf-8"))
            # A pointer without the key (written before revisions were recorded) keeps the outer pointer's.
            target, revision = entry["checkpoint"], entry.get("revision", revision)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{pointer}: expected JSON {{\"checkpoint\": \"<hub id or path>\"}}") from exc
        if not isinstance(target, str) or not target:
            raise InputError(f"{pointer}: 'checkpoint' must be a non-empty string (hub id or path)")
        relative = Path(source) / target
        current = str(relative) if not Path(target).is_absolute() and relative.exists() else target

    folder, commit = _local_folder(source, what, revision)
    if not any((Path(folder) / name).is_file() for name in ("modules.json", "config_sentence_transformers.json")):
        raise InputError(
            f"{path_or_id!r} ({folder}) is not a ColBERT checkpoint: no modules.json or "
            "config_sentence_transformers.json. Point to a folder saved by the train stage or by PyLate; "
            "a plain base encoder belongs in train.base_model"
        )
    _check_token_projection(Path(folder), path_or_id)
    model = MultiVectorEncoder(folder, device=device, local_files_only=True,
                               model_kwargs={"attn_implementation": attn_implementation} if attn_implementation else None)
    model.colbench_source = str(path_or_id)
    model.colbench_revision = commit
    if document_length is not None:
        check_lengths(model[0], "encode", document_length=document_length)
        model[0].document_length = int(document_length)  # part of the module config: the fingerprint follows
    return model


def check_lengths(transformer, section: str, **lengths: int) -> None:
    """Refuse a length (in tokens) beyond the encoder's position table, which would fail deep in torch."""
    limit = getattr(transformer.auto_model.config, "max_position_embeddings", None)
    for name, length in lengths.items():
        if limit and length > limit:
            raise InputError(f"{section}.{name} is {length}, but the encoder has positions for {limit} tokens: "
                             f"set it to at most {limit}.")


def _check_token_projection(folder: Path, name: str) -> None:
    """Refuse a single-vector sentence-transformers model: sentence-transformers would load it as a ColBERT by
    adding a randomly initialised projection (a different one on every load) and no [Q]/[D] prefixes."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return
    try:
        kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in json.loads(modules_file.read_text(encoding="utf-8"))]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{modules_file}: not a sentence-transformers modules list ({exc})") from exc
    if "Pooling" in kinds or "Dense" not in kinds:
        raise InputError(
            f"{name!r} ({folder}) is not a ColBERT checkpoint: its modules are {kinds}, a single-vector model "
            "(pooling, or no token projection). Point to a folder saved by the train stage or by PyLate; a plain "
            "base encoder belongs in train.base_model"
        )


def parameter_sha256(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the model's state (parameters and buffers): name, dtype, shape and bytes,
    in name order. Equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        # Viewing as bytes works for every dtype (numpy has no bfloat16).
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def model_fingerprint(model) -> dict[str, Any]:
    """A small dict identifying `model` for manifests.

    `sha256`: `parameter_sha256`, truncated to 16 hex characters; `config_sha256`: over the module configs
    and prompts (lengths, expansion, skiplist...), which change embeddings without changing weights. Compare
    both to refuse mixing models; `name` is informational (the same model may be loaded from two paths).
    """
    config: dict[str, Any] = {"prompts": dict(sorted((getattr(model, "prompts", None) or {}).items()))}
    for index, module in enumerate(model):
        getter = getattr(module, "get_config_dict", None)
        config[f"{index}:{type(module).__name__}"] = getter() if callable(getter) else None
    config_digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "name": str(getattr(model, "colbench_source", None) or getattr(model.model_card_data, "base_model", None) or ""),
        "embedding_dim": int(model.get_embedding_dimension()),
        "sha256": parameter_sha256(model)[:16],
        "config_sha256": config_digest[:16],
    }
