"""DVC experiments as a table (``dvc exp show --json``), and their snapshot for the report.

Shape of ``dvc exp show --json`` (dvc 3.67, checked on a scratch repository): a list whose entries
are the workspace (``rev == "workspace"``) and the baseline commit(s), each
``{rev, name, data: {timestamp, params: {file: {data}}, metrics: {file: {data} | {error}}, ...},
error, experiments}``; a baseline's ``experiments`` is a list of ``{name, executor, revs: [entry]}``.

Pitfalls seen there: ``dvc exp run`` leaves the experiment's params in the workspace, so a second
``-S`` builds on the first unless the workspace is reset; and ``-S key=4e-5`` is written to
params.yaml as ``4e-05``, which PyYAML (YAML 1.1) reads back as a *string* (DVC itself reads a float).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from colbench.errors import InputError, exit_with

_GENERIC_STEMS = {"metrics", "scores", "results", "eval", "evaluate"}


def load_experiments(
    repo_dir: str | Path,
    dvc_exe: str = "dvc",
    *,
    metrics: Iterable[str] = ("ndcg@10",),
    include_workspace: bool = False,
    all_commits: bool = False,
    all_params: bool = False,
) -> pd.DataFrame:
    """Every DVC experiment of the repository at ``repo_dir`` as one row each.

    Columns: ``experiment`` (name), ``role`` (``baseline`` for the commit experiments branch from,
    ``experiment``, ``workspace``), ``same_as_baseline`` (its params equal its baseline's: the study
    configuration when the baseline is the study), ``rev`` (short hash), ``timestamp``, ``error``;
    then one column per param (dotted key) whose value differs between rows (every param with
    ``all_params``); then ``<metric>/<dataset>`` for each name in ``metrics`` found in the metrics files
    (the dataset is the key above the metric, else the file's name, e.g. ``reports/metrics/scifact.json``).
    Rows: baselines, then their experiments by time, then the workspace if asked for. The param and
    metric column names are also in ``df.attrs["params"]`` and ``df.attrs["metrics"]``.
    """
    entries = _exp_show(Path(repo_dir), dvc_exe, all_commits)
    return experiments_table(entries, metrics=metrics, include_workspace=include_workspace, all_params=all_params,
                             where=str(repo_dir))


def experiments_table(entries: list[dict[str, Any]], *, metrics: Iterable[str] = ("ndcg@10",),
                      include_workspace: bool = False, all_params: bool = False, where: str = "") -> pd.DataFrame:
    """The table of :func:`load_experiments` from already parsed ``dvc exp show --json`` entries."""
    wanted = set(metrics)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        is_workspace = entry.get("rev") == "workspace"
        if is_workspace and not include_workspace:
            continue
        base = _row(entry, "workspace" if is_workspace else "baseline", entry.get("name"), wanted)
        if base is None:
            continue
        rows.append(base)
        children = []
        for group in entry.get("experiments") or []:
            revs = group.get("revs") or []
            if revs:  # a checkpoint experiment lists several revs, newest first
                child = _row(revs[0], "experiment", group.get("name") or revs[0].get("name"), wanted)
                if child is not None:
                    child["same_as_baseline"] = child["_params"] == base["_params"]
                    children.append(child)
        rows.extend(sorted(children, key=lambda r: (r["timestamp"] or "", r["experiment"])))
    baselines = [r for r in rows if r["role"] == "baseline"]
    for r in rows:
        if r["role"] == "workspace":  # the workspace builds on the first (HEAD) baseline
            r["same_as_baseline"] = bool(baselines) and r["_params"] == baselines[0]["_params"]
    if not rows:
        raise InputError(f"`dvc exp show` found nothing in {where}: commit the study and run `dvc exp run`")

    param_keys = sorted({k for r in rows for k in r["_params"]})
    if not all_params:
        param_keys = [k for k in param_keys if len({_key(r["_params"].get(k)) for r in rows}) > 1]
    metric_keys = sorted({k for r in rows for k in r["_metrics"]})
    table = pd.DataFrame(
        [
            {
                **{c: r[c] for c in ("experiment", "role", "same_as_baseline", "rev", "timestamp", "error")},
                **{k: _display(r["_params"].get(k)) for k in param_keys},
                **{k: r["_metrics"].get(k) for k in metric_keys},
            }
            for r in rows
        ]
    )
    for key in metric_keys:
        table[key] = pd.to_numeric(table[key], errors="coerce")  # a broken metric reads as NaN
    table.attrs["params"], table.attrs["metrics"] = param_keys, metric_keys
    # Per experiment, {dataset: {query_id: metric}} where the snapshot holds it (see save_experiments).
    table.attrs["per_query"] = {r["experiment"]: r["_per_query"] for r in rows if r["_per_query"]}
    return table


def _exp_show(repo_dir: Path, dvc_exe: str, all_commits: bool) -> list[dict[str, Any]]:
    if not (repo_dir / ".dvc").is_dir():
        raise InputError(f"{repo_dir} is not a DVC repository (no .dvc folder): run `dvc init` there")
    cmd = [*_dvc_command(dvc_exe), "exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=repo_dir, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InputError(f"`{' '.join(cmd)}` failed in {repo_dir}: {done.stderr.strip()[-2000:]}")
    # Warnings may precede the JSON on stdout; the document starts at its first '['.
    start = done.stdout.find("[")
    try:
        return json.loads(done.stdout[start:]) if start >= 0 else []
    except json.JSONDecodeError as err:
        raise InputError(f"`dvc exp show --json` printed no JSON in {repo_dir}: {err}") from None


def _dvc_command(dvc_exe: str) -> list[str]:
    found = shutil.which(dvc_exe)
    if found:
        return [found]
    # A notebook kernel started from the venv may not have the venv's bin on PATH.
    sibling = Path(sys.executable).with_name(Path(dvc_exe).name)
    if dvc_exe == "dvc" and sibling.exists():
        return [str(sibling)]
    raise InputError(f"DVC executable {dvc_exe!r} not found: install dvc or pass dvc_exe=<path>")


def _row(entry: Mapping[str, Any], role: str, name: str | None, wanted: set[str]) -> dict[str, Any] | None:
    data = entry.get("data")
    if not data:
        return None
    rev = str(entry.get("rev") or data.get("rev") or "")
    params: dict[str, Any] = {}
    for file, content in (data.get("params") or {}).items():
        prefix = "" if file == "params.yaml" else f"{file}:"
        params.update(_flatten((content or {}).get("data") or {}, prefix))
    found: dict[str, Any] = {}
    for file, content in (data.get("metrics") or {}).items():
        for key, value in _flatten((content or {}).get("data") or {}).items():
            *above, leaf = key.split(".")
            if leaf in wanted and len(above) <= 1:  # deeper keys are variants (e.g. a dataset's other_protocol)
                found[f"{leaf}/{above[-1] if above else _dataset_of(file)}"] = value
    error = entry.get("error")
    return {
        "experiment": name or (rev if rev == "workspace" else rev[:7]),
        "role": role,
        "same_as_baseline": role == "baseline",
        "rev": rev if rev == "workspace" else rev[:7],
        "timestamp": data.get("timestamp"),
        "error": (error.get("msg") if isinstance(error, Mapping) else str(error)) if error else "",
        "_params": params,
        "_metrics": found,
        "_per_query": data.get("per_query") or {},
    }


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _dataset_of(file: str) -> str:
    path = Path(file)
    return path.parent.name if path.stem in _GENERIC_STEMS and path.parent.name else path.stem


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _display(value: Any) -> Any:
    # Lists and dicts (e.g. k_values) become JSON text so the column compares and prints cleanly.
    return _key(value) if isinstance(value, (list, dict)) else value


def save_experiments(pipeline_dir: str | Path, out: str | Path, dvc_exe: str = "dvc") -> Path:
    """Write ``dvc exp show --json`` for the pipeline in ``pipeline_dir`` to ``out`` (atomically), for the report stage.

    The report reads this file instead of calling DVC itself: a stage that ran `dvc exp show` inside
    `dvc repro` would wait on the lock that repro holds. DVC lists the params and metrics files of every
    pipeline of the repository (the study's at the root and the demo's in demo/); only this pipeline's are
    kept, named relative to its folder (see :func:`scope_entries`).
    """
    from colbench.atomic import write_json

    pipeline_dir = Path(pipeline_dir).resolve()
    root = _dvc_root(pipeline_dir)
    scope = pipeline_dir.relative_to(root).as_posix()
    scope = "" if scope == "." else scope
    entries = scope_entries(_exp_show(root, dvc_exe, all_commits=False), scope,
                            others=_pipelines_under(pipeline_dir, root))
    for entry in _all_entries(entries):
        entry["data"]["per_query"] = _per_query(root, scope, entry)
    write_json(out, entries)
    return Path(out)


def _all_entries(entries: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every entry with data: the workspace, the baselines and each experiment's newest rev."""
    for entry in entries:
        if entry.get("data"):
            yield entry
        for group in entry.get("experiments") or []:
            if group.get("revs") and group["revs"][0].get("data"):
                yield group["revs"][0]


def _per_query(root: Path, scope: str, entry: Mapping[str, Any], metric: str = "ndcg@10") -> dict[str, dict[str, float]]:
    """``{dataset: {query_id: metric}}`` of one experiment, read from the DVC cache at its revision (its evaluate
    stage's per-query file): what the report needs for seed intervals and paired comparisons. Datasets whose
    file this machine's cache does not hold (a baseline run elsewhere) are left out."""
    import dvc.api

    from colbench.config import LAYOUT

    rev = entry.get("rev") or entry["data"].get("rev")
    datasets = ((entry["data"].get("params") or {}).get("params.yaml", {}).get("data", {})
                .get("prepare", {}).get("datasets", {}))
    found = {}
    for dataset in datasets:
        path = "/".join(filter(None, [scope, LAYOUT.reports, "per_query", f"{dataset}.json"]))
        try:
            if rev == "workspace":  # the file as it is (dvc.api would resolve the path against the cwd)
                per_query = json.loads((root / path).read_text(encoding="utf-8"))
            else:
                per_query = json.loads(dvc.api.read(path, repo=str(root), rev=rev))
        except Exception:  # noqa: BLE001 - not in this machine's cache: the report shows the metrics without it
            continue
        found[dataset] = {qid: values[metric] for qid, values in per_query.items()}
    return found


def scope_entries(entries: list[dict[str, Any]], scope: str, others: Iterable[str] = ()) -> list[dict[str, Any]]:
    """``entries`` of ``dvc exp show --json`` keeping only the params and metrics files inside the folder ``scope``
    (relative to the DVC root, ``""`` for the root) and outside the folders ``others`` (nested pipelines),
    with their names made relative to ``scope``. Experiments and their order are kept as they are."""
    prefix = f"{scope.rstrip('/')}/" if scope else ""
    skip = tuple(f"{o.rstrip('/')}/" for o in others)

    def files(section: Mapping[str, Any] | None) -> dict[str, Any]:
        return {name[len(prefix):]: content for name, content in (section or {}).items()
                if name.startswith(prefix) and not name.startswith(skip)}

    def scoped(entry: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(entry)
        if entry.get("data"):  # the report reads params and metrics; deps and outs records are dropped
            out["data"] = {"rev": entry["data"].get("rev"), "timestamp": entry["data"].get("timestamp"),
                           "params": files(entry["data"].get("params")),
                           "metrics": files(entry["data"].get("metrics"))}
        if entry.get("experiments"):
            out["experiments"] = [{**group, "revs": [scoped(r) for r in group.get("revs") or []]}
                                  for group in entry["experiments"]]
        return out

    return [scoped(entry) for entry in entries]


def _pipelines_under(pipeline_dir: Path, root: Path) -> list[str]:
    """Pipeline folders below ``pipeline_dir`` (a params.yaml of their own, as demo/), relative to ``root``;
    hidden folders and outputs (data, models, reports) are not searched."""
    found = []
    for folder, dirs, names in os.walk(pipeline_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in {"data", "models", "reports"}]
        if "params.yaml" in names and Path(folder) != pipeline_dir:
            found.append(Path(folder).relative_to(root).as_posix())
    return found


def table_from_file(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    """The experiments table from a file written by :func:`save_experiments`; empty when it lists none."""
    entries = json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).is_file() else []
    if not entries:
        return pd.DataFrame(columns=["experiment", "role", "same_as_baseline", "rev", "timestamp", "error"])
    return experiments_table(entries, where=str(path), **kwargs)


def main(argv: list[str] | None = None) -> None:
    """``python -m colbench.experiments --out reports/experiments.json``: snapshot this pipeline's experiments."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m colbench.experiments", description=main.__doc__)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--pipeline", default=".", type=Path,
                        help="the pipeline's folder, the one holding its params.yaml (default: the current folder)")
    options = parser.parse_args(argv)
    try:
        save_experiments(options.pipeline, options.out)
    except InputError as exc:
        exit_with(exc)
    print(f"experiments: {len(table_from_file(options.out))} rows written to {options.out}")


def _dvc_root(folder: Path) -> Path:
    for candidate in [folder.resolve(), *folder.resolve().parents]:
        if (candidate / ".dvc").is_dir():
            return candidate
    raise InputError(f"{folder} is not inside a DVC repository")


if __name__ == "__main__":
    main()
