"""pyproject.toml's ranges, constraints.txt's tested set and environment.yml agree, and match what is installed.

pyproject.toml declares ranges (lower bound = the oldest tested version, upper bound = the next major);
constraints.txt is the exact tested set that ``make setup`` installs; environment.yml lists the same pins
for conda. The installed versions must equal constraints.txt, so CI catches drift.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)$")
TORCH_VERSION = "2.13.0"
TESTED_PYTHON = "3.11"
ADMITTED_PYTHONS = ["3.11", "3.12", "3.13"]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _pyproject_requirements() -> list[str]:
    """The runtime dependencies and every extra's but ``gpu`` (installed on GPU machines only:
    constraints-gpu.txt)."""
    project = _pyproject()["project"]
    requirements = list(project["dependencies"])
    for name, extra in project.get("optional-dependencies", {}).items():
        if name != "gpu":
            requirements += list(extra)
    return requirements


def _pyproject_ranges() -> dict[str, SpecifierSet]:
    ranges: dict[str, SpecifierSet] = {}
    for text in _pyproject_requirements():
        requirement = Requirement(text)
        name = _canonical(requirement.name)
        assert name not in ranges, f"{name} is listed twice in pyproject.toml"
        ranges[name] = requirement.specifier
    return ranges


def _constraints_requirements() -> list[str]:
    lines = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _conda_pip_requirements() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml must have exactly one pip: section"
    return [str(r).strip() for r in pip_sections[0] if str(r).strip() != "-e ."]


def _pins(requirements: list[str], source: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = PIN.match(requirement.strip())
        assert match, f"{requirement!r} in {source} is not pinned with =="
        name = _canonical(match.group(1))
        assert name not in pins, f"{name} is listed twice in {source}"
        pins[name] = match.group(2)
    return pins


def _constraints(file: str = "constraints.txt") -> dict[str, str]:
    lines = (ROOT / file).read_text(encoding="utf-8").splitlines()
    return _pins([line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()], file)


# ----------------------------------------------------------------------------------------------
# pyproject.toml: ranges that admit the tested set


def test_constraints_and_environment_yml_pin_every_entry_exactly():
    assert _constraints_requirements(), "constraints.txt lists no pins"
    assert _conda_pip_requirements(), "environment.yml lists no pip dependencies"
    _constraints()
    _pins(_conda_pip_requirements(), "environment.yml")


def test_constraints_cover_exactly_the_declared_dependencies():
    declared = set(_pyproject_ranges())
    pinned = set(_constraints())
    assert not declared - pinned, f"declared in pyproject.toml but not pinned in constraints.txt: {declared - pinned}"
    assert not pinned - declared, f"pinned in constraints.txt but not declared in pyproject.toml: {pinned - declared}"


@pytest.mark.parametrize("name", sorted(_pyproject_ranges()))
def test_pyproject_range_starts_at_the_tested_version_and_admits_it(name):
    spec = _pyproject_ranges()[name]
    pinned = _constraints()[name]
    operators = {s.operator: s.version for s in spec}
    assert set(operators) == {">=", "<"}, f"{name}: expected a range '>=tested,<next major', got {spec}"
    # numpy: the GPU set's older version (constraints-gpu.txt) is the lower bound
    oldest = min(Version(pinned), Version(_constraints("constraints-gpu.txt")[name]))
    assert Version(operators[">="]) == oldest, (
        f"{name}: lower bound {operators['>=']} is not the oldest of the tested and GPU versions ({oldest})"
    )
    assert spec.contains(pinned, prereleases=True), f"{name}: {spec} does not admit the tested {pinned}"
    lower, upper = Version(operators[">="]), Version(operators["<"])
    expected_upper = Version(f"{lower.major + 1}") if lower.major >= 1 else Version("1")
    assert upper == expected_upper, f"{name}: upper bound {upper}, expected <{expected_upper} (next major)"


def test_notebook_tools_are_extras_and_dev_tools_are_in_dev():
    project = _pyproject()["project"]
    runtime = {_canonical(Requirement(r).name) for r in project["dependencies"]}
    extras = {k: {_canonical(Requirement(r).name) for r in v} for k, v in project["optional-dependencies"].items()}
    assert {"pytest", "hypothesis", "nbval", "ruff", "pre-commit"} <= extras["dev"]
    assert "jupyterlab" in extras["notebooks"]
    assert {"papermill", "nbformat", "ipykernel", "torch"} <= runtime
    assert not runtime & {"jupyterlab", "nbval", "pytest", "ruff", "pre-commit"}


def test_requires_python_admits_3_11_to_3_13():
    spec = SpecifierSet(_pyproject()["project"]["requires-python"])
    for python in ADMITTED_PYTHONS:
        assert spec.contains(python), f"requires-python {spec} does not admit {python}"
    assert not spec.contains("3.10") and not spec.contains("3.14")


def test_console_script_is_declared():
    assert _pyproject()["project"]["scripts"]["segattr"] == "segattr_utils.cli:main"


# ----------------------------------------------------------------------------------------------
# constraints.txt, environment.yml, Makefile and pre-commit agree


def test_environment_yml_pins_equal_constraints():
    constraints = _constraints()
    conda = _pins(_conda_pip_requirements(), "environment.yml")
    only_constraints = {k: v for k, v in constraints.items() if k not in conda}
    only_conda = {k: v for k, v in conda.items() if k not in constraints}
    differing = {k: (constraints[k], conda[k]) for k in constraints.keys() & conda.keys() if constraints[k] != conda[k]}
    assert not only_constraints, f"only in constraints.txt: {only_constraints}"
    assert not only_conda, f"only in environment.yml: {only_conda}"
    assert not differing, f"pins differ (constraints.txt, environment.yml): {differing}"
    # Same requirement strings, too (no spelling drift).
    assert sorted(_constraints_requirements()) == sorted(_conda_pip_requirements())


def test_environment_yml_installs_the_project_editable():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip


def test_conda_python_is_the_tested_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pythons == [f"python={TESTED_PYTHON}"]
    assert SpecifierSet(_pyproject()["project"]["requires-python"]).contains(TESTED_PYTHON)


def test_torch_is_pinned_to_2_13_0():
    assert _constraints()["torch"] == TORCH_VERSION
    assert _pins(_conda_pip_requirements(), "environment.yml")["torch"] == TORCH_VERSION


def test_makefile_installs_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert f"-c constraints.txt torch=={_constraints()['torch']}" in makefile
    assert re.search(r'-e "\.\[[^"]*\]" -c constraints\.txt', makefile)
    assert re.search(r"^\$\(STAMP\):.*\bconstraints\.txt\b", makefile, re.M)


def test_gpu_set_is_the_tested_set_with_numpy_2_3_and_the_gpu_extra():
    gpu, tested = _constraints("constraints-gpu.txt"), _constraints()
    extra = {
        _canonical(Requirement(r).name): Requirement(r) for r in _pyproject()["project"]["optional-dependencies"]["gpu"]
    }
    assert set(extra) == {"vllm", "deepspeed", "bitsandbytes"}
    assert {k: v for k, v in gpu.items() if k not in extra} == dict(tested, numpy="2.3.5")
    for name, requirement in extra.items():
        assert str(requirement.specifier) == f"=={gpu[name]}", f"{name}: the gpu extra and constraints-gpu.txt differ"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r'^setup-gpu:.*\n(\t.*\n)*\t.*-e "\.\[gpu\]" -c constraints-gpu\.txt', makefile, re.M)


def test_pre_commit_ruff_rev_matches_constraints():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    revs = [r["rev"] for r in config["repos"] if r["repo"].endswith("/ruff-pre-commit")]
    assert revs == [f"v{_constraints()['ruff']}"]


# ----------------------------------------------------------------------------------------------
# The running environment is the tested set


@pytest.mark.parametrize("name, pinned", sorted(_constraints().items()))
def test_installed_version_matches_constraints(name, pinned):
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{name}=={pinned} is in constraints.txt but not installed (make setup installs it)")
    if name == "torch":
        # A CPU/CUDA wheel carries a local label ("2.13.0+cpu"); the public version must match.
        public, _, local = installed.partition("+")
        assert public == pinned, f"torch {installed} installed, {pinned} in constraints.txt"
        assert re.fullmatch(r"(cpu|cu\d+|rocm[\d.]+)?", local), f"unexpected torch local label {local!r}"
    else:
        assert installed == pinned, f"{name} {installed} installed, {pinned} in constraints.txt"
