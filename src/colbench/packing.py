"""Training documents through ModernBERT without their padding (``train.pack_documents``): the same embeddings,
computed on real tokens only.

In transformers 5 ModernBERT runs every padded position through all its layers, whatever the attention
implementation (4.x dropped the padding inside the model with flash attention). Packed, a batch of documents is
one row of its real tokens, each document with its own positions (0, 1, ...) and attending only to itself, within
ModernBERT's local window on the local layers. Every layer then computes real tokens only; the attention runs per
document, with torch's variable-length flash attention on a GPU in bf16/fp16 (``torch.nn.attention.varlen``), else
as one padded attention (the padding only there). The output is put back in the padded layout the rest of the model
expects.

Written here because neither library does it for this model: sentence-transformers pads each batch, and
transformers packs sequences only for its flash-attention kernels (the flash-attn package, absent from the
GPU machines this project runs on). Only documents are packed: a query's [MASK] expansion is masked out as a key
but computed as a query, which one row per document cannot express; both are padded with [MASK], so a batch is
known to be documents by the task the model is called with (``model(features, task="document")``, as the loss
embeds its document columns).
"""

from __future__ import annotations

import inspect
import warnings

import torch
import torch.nn.functional as F

from colbench.errors import InputError

ATTENTION = "colbench_packed"  # the attention implementation's name in transformers' registry
PACKED_KEYS = ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def pack_documents(model) -> None:
    """Make every document forward of ``model`` (a `MultiVectorEncoder` on ModernBERT) packed; queries, and
    documents of any batch that is not right-padded, run as before. Raises InputError for another architecture."""
    transformer = model[0]
    encoder = transformer.model
    if encoder.config.model_type != "modernbert":
        raise InputError(f"train.pack_documents: packing is written for ModernBERT, not {encoder.config.model_type!r} "
                         "(its positions and local attention); set it to false")
    if torch.cuda.is_available() and _varlen() is None:
        warnings.warn(f"train.pack_documents: torch {torch.__version__} has no variable-length attention with a "
                      "local window (torch.nn.attention.varlen's window_size, torch >= 2.11): on the GPU the packed "
                      "attention pads each batch, and packing saves little. Install torch >= 2.11 for the unpadded "
                      "kernel.", stacklevel=2)
    _register()
    encoder.config._attn_implementation = ATTENTION
    packer = _Packer()
    model.register_forward_pre_hook(packer.start, with_kwargs=True)
    model.register_forward_hook(packer.end, with_kwargs=True)
    transformer.register_forward_pre_hook(packer.pack, with_kwargs=True)
    transformer.register_forward_hook(packer.unpack, with_kwargs=True)


class _Packer:
    """Hooks: around the model, which task it runs; around its Transformer module, pack the features before and
    unpack them after, for documents."""

    def __init__(self) -> None:
        self.task = None  # the task of the model call in progress
        self.padded = None  # (input_ids, attention_mask, kept positions) of the batch being packed

    def start(self, module, args, kwargs):
        self.task = kwargs.get("task")

    def end(self, module, args, kwargs, output):
        self.task = None

    def pack(self, module, args, kwargs):
        features = args[0]
        ids, mask = features.get("input_ids"), features.get("attention_mask")
        if self.task != "document" or ids is None or mask is None or ids.dim() != 2:
            return None
        kept = mask.bool()
        lengths = kept.sum(1)
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        if kept.all() or not bool((kept == (positions < lengths[:, None])).all()):
            return None  # nothing to drop, or not right-padded
        self.padded = ids, mask, kept
        cumulative = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        longest = int(lengths.max())
        features.update(input_ids=ids[kept][None], position_ids=positions[kept][None],
                        # Prepared masks (none: the attention separates the documents), so that the model builds none.
                        attention_mask={"full_attention": None, "sliding_attention": None},
                        cu_seq_lens_q=cumulative, cu_seq_lens_k=cumulative, max_length_q=longest, max_length_k=longest)
        return None

    def unpack(self, module, args, kwargs, features):
        if self.padded is None:
            return None
        ids, mask, kept = self.padded
        self.padded = None
        packed = features["token_embeddings"][0]
        embeddings = packed.new_zeros(*ids.shape, packed.shape[-1])
        embeddings[kept] = packed  # padded positions stay zero: every later step masks them
        for key in PACKED_KEYS:
            features.pop(key, None)
        features.update(input_ids=ids, attention_mask=mask, token_embeddings=embeddings)
        return features


def packed_attention(module, query, key, value, attention_mask, *, scaling=None, dropout=0.0, sliding_window=None,
                     cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """transformers' attention interface: each document attending to itself on a packed batch, else its SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      sliding_window=sliding_window, **kwargs)
    if dropout:
        raise ValueError("packed attention has no dropout (ModernBERT's attention_dropout is 0)")
    # ModernBERT passes its local window + 1 (flash attention's convention): a token sees |i - j| <= window.
    window = -1 if sliding_window is None else sliding_window - 1
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, head_dim)
    varlen = _varlen() if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) else None
    if varlen is not None:
        q, k, v = (t.contiguous() for t in (q, k, v))  # flash attention's layout, whatever the strides it accepts
        out = varlen(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, scale=scaling,
                     window_size=(window, window))
    else:
        out = _padded_attention(q, k, v, cu_seq_lens_q, max_length_q, scaling, window)
    return out[None], None


def _padded_attention(q, k, v, cu_seq_lens, longest, scale, window):
    """Where no variable-length kernel runs: one SDPA over the documents side by side, each padded to the longest.
    Only the attention sees the padding; the layers around it still compute real tokens only."""
    cu_seq_lens = cu_seq_lens.long()
    lengths = cu_seq_lens.diff()
    document = torch.repeat_interleave(torch.arange(len(lengths), device=q.device), lengths)
    position = torch.arange(q.shape[0], device=q.device) - cu_seq_lens[document]

    def padded(tokens):  # (tokens, heads, head_dim) -> (documents, heads, longest, head_dim)
        out = tokens.new_zeros(len(lengths), longest, *tokens.shape[1:])
        out[document, position] = tokens
        return out.transpose(1, 2)

    columns = torch.arange(longest, device=q.device)
    real = columns < lengths[:, None]  # (documents, longest)
    seen = ((columns[:, None] - columns[None, :]).abs() <= window if window >= 0
            else torch.ones(longest, longest, dtype=torch.bool, device=q.device))
    # Padding rows see every real key: some SDPA kernels give NaN for a row that sees none, and gradients spread it.
    mask = real[:, None, None, :] & (seen | ~real[:, None, :, None])
    out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=mask, scale=scale)
    return out.transpose(1, 2)[document, position]


def _varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.9
        return None
    # torch 2.9 and 2.10 have the kernel without the local window of ModernBERT's local layers (torch 2.9: nor a scale).
    parameters = inspect.signature(varlen_attn).parameters
    return varlen_attn if {"window_size", "scale"} <= parameters.keys() else None


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # queries and unpacked batches: SDPA's masks
