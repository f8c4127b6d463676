"""The dependency pins of pyproject.toml and environment.yml agree, and match what is installed."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)$")
TORCH_VERSION = "2.13.0"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_requirements() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = data["project"]
    optional = project.get("optional-dependencies", {})
    return list(project["dependencies"]) + list(optional.get("dev", []))


def _conda_pip_requirements() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml must have exactly one pip: section"
    return [str(r).strip() for r in pip_sections[0] if str(r).strip() != "-e ."]


def _pins(requirements: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = PIN.match(requirement.strip())
        assert match, f"{requirement!r} is not pinned with =="
        name = _canonical(match.group(1))
        assert name not in pins, f"{name} is listed twice"
        pins[name] = match.group(2)
    return pins


def test_every_pyproject_dependency_is_pinned_exactly():
    requirements = _pyproject_requirements()
    assert requirements, "pyproject.toml lists no dependencies"
    for requirement in requirements:
        assert PIN.match(requirement.strip()), f"{requirement!r} in pyproject.toml is not pinned with =="


def test_every_environment_yml_pip_dependency_is_pinned_exactly():
    requirements = _conda_pip_requirements()
    assert requirements, "environment.yml lists no pip dependencies"
    for requirement in requirements:
        assert PIN.match(requirement), f"{requirement!r} in environment.yml is not pinned with =="


def test_environment_yml_installs_the_project_editable():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip


def test_pins_agree_exactly():
    pyproject = _pins(_pyproject_requirements())
    conda = _pins(_conda_pip_requirements())
    only_pyproject = {k: v for k, v in pyproject.items() if k not in conda}
    only_conda = {k: v for k, v in conda.items() if k not in pyproject}
    differing = {k: (pyproject[k], conda[k]) for k in pyproject.keys() & conda.keys() if pyproject[k] != conda[k]}
    assert not only_pyproject, f"only in pyproject.toml: {only_pyproject}"
    assert not only_conda, f"only in environment.yml: {only_conda}"
    assert not differing, f"pins differ (pyproject, environment.yml): {differing}"
    # Same requirement strings, too (no spelling drift).
    assert sorted(_pyproject_requirements()) == sorted(_conda_pip_requirements())


def test_dev_dependencies_include_pytest_and_hypothesis():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dev = _pins(data["project"]["optional-dependencies"]["dev"])
    assert {"pytest", "hypothesis"} <= dev.keys()


def test_torch_is_pinned_to_2_13_0():
    assert _pins(_pyproject_requirements())["torch"] == TORCH_VERSION
    assert _pins(_conda_pip_requirements())["torch"] == TORCH_VERSION


def test_conda_python_matches_requires_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pythons == ["python=3.11"]
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert data["project"]["requires-python"] == ">=3.11,<3.12"


@pytest.mark.parametrize("name, pinned", sorted(_pins(_pyproject_requirements()).items()))
def test_installed_version_matches_pin(name, pinned):
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{name}=={pinned} is pinned but not installed")
    if name == "torch":
        # A CPU/CUDA wheel carries a local label ("2.13.0+cpu"); the public version must match.
        public, _, local = installed.partition("+")
        assert public == pinned, f"torch {installed} installed, {pinned} pinned"
        assert re.fullmatch(r"(cpu|cu\d+|rocm[\d.]+)?", local), f"unexpected torch local label {local!r}"
    else:
        assert installed == pinned, f"{name} {installed} installed, {pinned} pinned"
