"""The pipeline's files agree with each other: one dvc.yaml, notebook parameters, committed notebooks."""

import json
import re
from pathlib import Path

import papermill
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_the_demo_runs_the_same_pipeline():
    # A symlink is not followed in git revisions by `dvc exp show`, so the demo holds a copy.
    assert (ROOT / "demo" / "dvc.yaml").read_bytes() == (ROOT / "dvc.yaml").read_bytes(), (
        "demo/dvc.yaml differs from dvc.yaml: run `cp dvc.yaml demo/dvc.yaml`"
    )


def test_every_stage_runs_its_own_notebook():
    assert [s for s in STAGES] == ["prepare", "train", "encode", "index", "retrieve", "evaluate", "report"]
    assert [nb.stem.split("_", 1)[1] for nb in NOTEBOOKS] == list(STAGES)
    for stage, spec in STAGES.items():
        notebook = next(nb for nb in NOTEBOOKS if nb.stem.endswith(stage))
        assert f"notebooks/{notebook.name}" in spec["cmd"]
        assert f"${{paths.code}}/notebooks/{notebook.name}" in spec["deps"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_papermill_parameter_exists_in_the_notebook(stage):
    # papermill only warns about an unknown -p name, so a typo would silently change nothing.
    cmd = STAGES[stage]["cmd"]
    notebook = ROOT / re.search(r"\$\{paths\.code\}/(notebooks/\S+\.ipynb)", cmd).group(1)
    passed = re.findall(r"-p\s+(\w+)", cmd)
    declared = papermill.inspect_notebook(str(notebook))
    assert passed, f"{stage}: no parameters passed"
    for name in passed:
        assert name in declared, f"{stage}: -p {name} is not in {notebook.name}'s parameters cell"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code)
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code)
    # Thin notebooks: logic lives in src, where it is tested.
    assert not any(re.search(r"^\s*(def|class) ", "".join(c["source"]), re.M) for c in code)


def test_every_stage_params_section_exists():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for stage, spec in STAGES.items():
        for key in spec.get("params", []):
            section = params
            for part in key.split("."):
                assert part in section, f"{stage}: params key {key} is not in params.yaml"
                section = section[part]
