"""environment.yml installs exactly what pyproject.toml declares."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_conda_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | {d for extra in project["optional-dependencies"].values() for d in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert set(pip) - {"-e ."} == declared, "edit environment.yml to match pyproject.toml"
    assert "-e ." in pip
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))
