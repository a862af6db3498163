"""Before any long work: is every remote resource the params name reachable, cached or local?

A full-study run needs the Hugging Face hub (base model, distillation set, NanoBEIR) and the BEIR
download server. Offline, the first stage lists everything that is missing, with the param that names it
and how to provide it, instead of failing with a stack trace halfway through the pipeline.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from colbench.config import Params
from colbench.errors import InputError

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
HUB_URL = "https://huggingface.co"


@dataclass(frozen=True)
class Resource:
    """One thing a run needs from the network: where it is named and what it is."""

    param: str  # the params key that names it
    kind: str  # "model", "dataset" (hub) or "beir" (BEIR download server)
    name: str


def is_local_or_builtin(source: str, base: Path) -> bool:
    return source.startswith(("builtin:", "pkg:")) or (base / source).exists() or Path(source).is_absolute()


def remote_resources(params: Params) -> list[Resource]:
    """Every remote resource the params name, in pipeline order."""
    base = params.file.parent
    found: list[Resource] = []
    kd = params.prepare.kd.source
    if not is_local_or_builtin(kd, base):
        found.append(Resource("prepare.kd.source", "dataset", kd))
    for name, dataset in params.prepare.datasets.items():
        if not is_local_or_builtin(dataset.source, base):
            found.append(Resource(f"prepare.datasets.{name}.source", "beir", dataset.source))
    model_key, model = ("train.checkpoint", params.train.checkpoint) if params.train.checkpoint else (
        "train.base_model",
        params.train.base_model,
    )
    if not is_local_or_builtin(model, base):
        found.append(Resource(model_key, "model", model))
    if params.train.eval.dataset == "nanobeir" and not params.train.checkpoint:
        found.append(Resource("train.eval.dataset", "nanobeir", "NanoBEIR (zeta-alpha-ai/Nano*)"))
    return found


def _in_hf_cache(resource: Resource, revision: str | None = None) -> bool:
    from huggingface_hub import snapshot_download

    repo_type = "dataset" if resource.kind == "dataset" else "model"
    try:
        snapshot_download(resource.name, repo_type=repo_type, revision=revision, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 - any failure here means "not cached"
        return False


def _in_beir_cache(name: str) -> bool:
    cache = Path(os.environ.get("COLBENCH_BEIR_CACHE", Path.home() / ".cache" / "colbench" / "beir"))
    return (cache / name / "corpus.jsonl").is_file()


def _reachable(url: str, timeout: float) -> bool:
    """A TCP connection to the host answers within ``timeout`` seconds (no request is sent)."""
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _how_to_provide(resource: Resource) -> str:
    if resource.kind == "model":
        return (
            f"on a machine with internet run `hf download {resource.name}` and copy the Hugging Face cache here, "
            f"or set {resource.param} to a local folder"
        )
    if resource.kind == "dataset":
        return (
            f"on a machine with internet run `hf download --repo-type dataset {resource.name}` and copy the cache, "
            f"or set {resource.param} to a local folder with train/queries/documents files in the same schema"
        )
    if resource.kind == "beir":
        return (
            f"download {BEIR_URL.format(name=resource.name)}, unzip it, and set {resource.param} to that folder "
            "(or put it in $COLBENCH_BEIR_CACHE)"
        )
    return f"set {resource.param} to a prepared dataset name, or null to skip the held-out evaluation"


def check_resources(params: Params, timeout: float = 5.0) -> list[Resource]:
    """Raise :class:`InputError` listing every remote resource that is neither cached nor reachable.

    Honours ``HF_HUB_OFFLINE=1`` (the hub is then never contacted). Returns the resources checked.
    """
    resources = remote_resources(params)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    hub_up = beir_up = None
    missing = []
    for res in resources:
        if res.kind == "beir":
            if _in_beir_cache(res.name):
                continue
            beir_up = _reachable(BEIR_URL, timeout) if beir_up is None else beir_up
            if not beir_up:
                missing.append(res)
            continue
        revision = params.prepare.kd.revision if res.param == "prepare.kd.source" else None
        if res.kind != "nanobeir" and _in_hf_cache(res, revision):
            continue
        hub_up = (not offline and _reachable(HUB_URL, timeout)) if hub_up is None else hub_up
        if not hub_up:
            missing.append(res)
    if missing:
        where = "HF_HUB_OFFLINE=1 is set" if offline else "the network is unreachable"
        lines = [f"- {r.param} = {r.name}: {_how_to_provide(r)}." for r in missing]
        raise InputError(
            f"{len(missing)} resource(s) this run needs are not available ({where}, and they are not cached):\n"
            + "\n".join(lines)
            + "\nNothing was computed. The offline demo (`make demo`) needs none of them."
        )
    return resources
