"""The pipeline's files agree with each other: dvc.yaml's stages, their notebooks and exact code dependencies,
the notebooks' parameters, and notebooks committed without outputs."""

import json
import re
from pathlib import Path

import papermill
import pytest
import yaml

from colbench.provenance import code_files, colbench_imports, import_closure

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = {name: spec["do"] for name, spec in DVC["stages"].items()}


def code(notebook: Path) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")


def expected_code_deps(stage: str) -> set[str]:
    notebook = next(nb for nb in NOTEBOOKS if nb.stem.endswith(stage))
    roots = colbench_imports(code(notebook))
    roots |= {m for m in re.findall(r"python -m colbench\.(\w+)", STAGES[stage]["cmd"])}  # e.g. the report's index
    return {f"src/colbench/{name}" for name in code_files(roots)}


def test_the_study_and_the_demo_run_the_same_stages():
    assert DVC["vars"][0]["pipelines"] == {"study": {"dir": ".", "code": "."}, "demo": {"dir": "demo", "code": ".."}}
    for stage, spec in DVC["stages"].items():
        assert spec["foreach"] == "${pipelines}" and STAGES[stage]["wdir"] == "${item.dir}", stage


def test_every_stage_runs_its_own_notebook():
    assert list(STAGES) == ["prepare", "train", "encode", "index", "retrieve", "evaluate", "report"]
    assert [nb.stem.split("_", 1)[1] for nb in NOTEBOOKS] == list(STAGES)
    for stage, spec in STAGES.items():
        notebook = next(nb for nb in NOTEBOOKS if nb.stem.endswith(stage))
        assert f"${{item.code}}/notebooks/{notebook.name}" in spec["cmd"]
        assert f"${{item.code}}/notebooks/{notebook.name}" in spec["deps"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_depends_on_exactly_the_code_its_notebook_imports(stage):
    # Too few and an edit leaves stale results that DVC calls up to date; too many and editing the report retrains.
    declared = {d.removeprefix("${item.code}/") for d in STAGES[stage]["deps"]
                if isinstance(d, str) and d.startswith("${item.code}/src/")}
    expected = expected_code_deps(stage)
    assert declared == expected, (f"{stage}: missing {sorted(expected - declared)}, "
                                  f"not imported {sorted(declared - expected)}")


def test_the_import_closure_follows_imports_inside_functions():
    # heldout is imported by the train notebook only inside train.run_training: it must still count.
    assert {"heldout", "retrieve", "index", "encode"} <= import_closure({"train"})
    assert "report" not in import_closure({"train"}) and "figures" not in import_closure({"train"})


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_papermill_parameter_exists_in_the_notebook(stage):
    # papermill only warns about an unknown -p name, so a typo would silently change nothing.
    cmd = STAGES[stage]["cmd"]
    notebook = ROOT / re.search(r"\$\{item\.code\}/(notebooks/\S+\.ipynb)", cmd).group(1)
    passed = re.findall(r"\s-p\s+(\w+)", cmd.split("papermill", 1)[1])
    declared = papermill.inspect_notebook(str(notebook))
    assert passed, f"{stage}: no parameters passed"
    for name in passed:
        assert name in declared, f"{stage}: -p {name} is not in {notebook.name}'s parameters cell"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code_cells = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code_cells)
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code_cells)
    # Thin notebooks: logic lives in src, where it is tested.
    assert not any(re.search(r"^\s*(def|class) ", "".join(c["source"]), re.M) for c in code_cells)


@pytest.mark.parametrize("params_file", ["params.yaml", "demo/params.yaml"])
def test_every_stage_params_section_exists(params_file):
    params = yaml.safe_load((ROOT / params_file).read_text())
    for stage, spec in STAGES.items():
        for key in spec.get("params", []):
            section = params
            for part in key.split("."):
                assert part in section, f"{stage}: params key {key} is not in {params_file}"
                section = section[part]


def test_stage_outputs_are_the_layout_the_code_writes():
    from colbench.config import LAYOUT

    declared = {next(iter(o)) if isinstance(o, dict) else o for spec in STAGES.values() for o in spec["outs"]}
    scratch = ("reports", "checkpoints", "encode_shards")  # checkpoints: the train stage's own, see dvc.yaml
    for name, path in vars(LAYOUT).items():
        if name not in scratch:
            assert path in declared, f"Layout.{name} = {path} is no stage's output"
    # What a killed stage resumes from must survive DVC deleting the stage's outputs before it reruns the stage.
    for name in ("checkpoints", "encode_shards"):
        inside = [out for out in declared if Path(getattr(LAYOUT, name)).is_relative_to(out)]
        assert not inside, f"Layout.{name} is inside the declared output(s) {inside}"
