"""Before any long work: is every remote resource the params name reachable, cached or local?

A full-study run needs the Hugging Face hub (base model, distillation set, NanoBEIR) and the BEIR
download server. Offline, the first stage lists everything that is missing, with the param that names it
and how to provide it, instead of failing with a stack trace halfway through the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from colbench import hub
from colbench.config import Params, load_params
from colbench.errors import InputError, exit_with


@dataclass(frozen=True)
class Resource:
    """One thing a run needs from the network: where it is named and what it is."""

    param: str  # the params key that names it
    kind: str  # "model", "dataset" (hub) or "beir" (BEIR download server)
    name: str
    revision: str | None = None  # the hub commit (branch, tag) asked for; None: the default branch


def is_local_or_builtin(source: str, base: Path) -> bool:
    return source.startswith(("builtin:", "pkg:")) or (base / source).exists() or Path(source).is_absolute()


def remote_resources(params: Params) -> list[Resource]:
    """Every remote resource the params name, in pipeline order.

    Evaluating an existing checkpoint (``train.checkpoint``) trains nothing: it needs neither the
    distillation set, the base model nor the held-out evaluation set.
    """
    base = params.file.parent
    found: list[Resource] = []
    train = params.train
    if not train.checkpoint and not is_local_or_builtin(params.prepare.kd.source, base):
        found.append(Resource("prepare.kd.source", "dataset", params.prepare.kd.source, params.prepare.kd.revision))
    for name, dataset in params.prepare.datasets.items():
        if not is_local_or_builtin(dataset.source, base):
            found.append(Resource(f"prepare.datasets.{name}.source", "beir", dataset.source))
    key, model = train.hub_model()
    if not is_local_or_builtin(model, base):
        found.append(Resource(key, "model", model, train.model_revision))
    else:  # refused here, before the prepare stage's work, rather than when training starts
        hub.refuse_revision_for_folder(train.model_revision, key, model)
    if train.eval.dataset == "nanobeir" and not train.checkpoint:
        found.append(Resource("train.eval.dataset", "nanobeir", hub.NANOBEIR))
    return found


def _how_to_provide(resource: Resource) -> str:
    at = f" --revision {resource.revision}" if resource.revision else ""
    if resource.kind == "model":
        return (
            f"on a machine with internet run `hf download {resource.name}{at}` and copy the Hugging Face cache here, "
            f"or set {resource.param} to a local folder"
        )
    if resource.kind == "dataset":
        return (
            f"on a machine with internet run `hf download --repo-type dataset {resource.name}{at}` and copy the cache, "
            f"or set {resource.param} to a local folder with train/queries/documents files in the same schema"
        )
    if resource.kind == "beir":
        return (
            f"download {hub.BEIR_URL.format(name=resource.name)}, unzip it, and set {resource.param} to that folder "
            "(or put it in $COLBENCH_BEIR_CACHE)"
        )
    return (f"on a machine with internet run `hf download --repo-type dataset {resource.name}` and copy the cache, or "
            f"set {resource.param} to a prepared dataset name, or null to skip the held-out evaluation")


def check_resources(params: Params, timeout: float = 5.0) -> list[Resource]:
    """Raise :class:`InputError` listing every remote resource that is neither cached nor reachable.

    Honours ``HF_HUB_OFFLINE=1`` (the hub is then never contacted). Returns the resources checked.
    """
    resources = remote_resources(params)
    offline = hub.offline()
    up: dict[str, bool] = {}  # server -> reachable, asked once

    def available(res: Resource) -> bool:
        if res.kind == "beir":
            return hub.beir_cached(res.name) or up.setdefault("beir", hub.reachable(hub.BEIR_URL, timeout))
        repo_type = "model" if res.kind == "model" else "dataset"
        if hub.cached_snapshot(res.name, repo_type, res.revision):
            return True
        return not offline and up.setdefault("hub", hub.reachable(hub.hub_url(), timeout))

    missing = [res for res in resources if not available(res)]
    if missing:
        where = "HF_HUB_OFFLINE=1 is set" if offline else "the network is unreachable"
        lines = [f"- {r.param} = {r.name}: {_how_to_provide(r)}." for r in missing]
        raise InputError(
            f"{len(missing)} resource(s) this run needs are not available ({where}, and they are not cached):\n"
            + "\n".join(lines)
            + "\nNothing was computed. The offline demo (`make demo`) needs none of them."
        )
    return resources


def describe_resources(resources: list[Resource]) -> str:
    """One sentence on what :func:`check_resources` returned (it raises when something is missing), for the
    prepare notebook."""
    if not resources:
        return "Resource check passed: these params name no remote resource (every source is local or bundled)."
    listed = "; ".join(f"{r.param} = {r.name}" for r in resources)
    return f"Resource check passed: {len(resources)} remote resource(s), each reachable or cached: {listed}."


def main(argv: list[str] | None = None) -> None:
    """``python -m colbench.preflight [params.yaml]``: say whether every remote resource is at hand (exit 0) or
    list what is missing and how to provide it (exit 2), before `dvc repro` starts anything."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    try:
        params = load_params(argv[0] if argv else "params.yaml")
        resources = check_resources(params)
    except InputError as exc:
        exit_with(exc)
    print(f"{params.file}: {len(resources)} remote resource(s), all reachable or cached")


if __name__ == "__main__":
    main()
