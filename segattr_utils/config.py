"""Profiles: one YAML file per scale (``smoke``, ``tiny``, ``paper``), the same code for all.

A profile names the models, data, sampling, attribution and selection settings of a run. Notebooks
select one in their ``parameters`` cell; everything else reads its settings from the profile, never
from constants in code. ``load_profile("tiny")`` reads the packaged file; ``load_profile(path)`` reads
a user's own YAML (copy ``paper.yaml`` to run on other models or traces). A profile may name a
``base`` profile whose values it overrides, and an ``upstream`` profile whose traces it trains on (a
student profile: :func:`segattr_utils.services.upstream_profile`).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml

PROFILE_DIR = Path(__file__).with_name("profiles")
REQUIRED_SECTIONS = (
    "name",
    "seed",
    "kind",
    "world",
    "models",
    "generation",
    "segmentation",
    "attribution",
    "selection",
)


class Profile(dict):
    """A nested dict with dotted access: ``profile.get_path("attribution.n_steps")``.

    ``source_path`` is the YAML file it was read from (None for a profile built in code), so that a
    subprocess (``accelerate launch``) can load the same profile.
    """

    source_path: Path | None = None

    @property
    def name(self) -> str:
        return self["name"]

    def get_path(self, dotted: str, default: Any = KeyError) -> Any:
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is KeyError:
                    raise KeyError(f"profile {self.get('name')!r} has no setting {dotted!r}")
                return default
            node = node[part]
        return node


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _read_profile_file(name_or_path: str | os.PathLike) -> tuple[dict, Path]:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no profile {str(name_or_path)!r}: use one of {', '.join(available_profiles())} or a path to a YAML file"
        )
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"profile file {path} must hold a mapping")
    return data, path


def _resolve(name_or_path: str | os.PathLike, seen: tuple[Path, ...] = ()) -> tuple[dict, Path]:
    data, path = _read_profile_file(name_or_path)
    if path.resolve() in seen:
        raise ValueError(f"profile {path} has a cyclic 'base' chain")
    base = data.pop("base", None)
    if base is None:
        return data, path
    base_path = Path(base)
    if base_path.suffix in (".yaml", ".yml") and not base_path.is_absolute():
        base = path.parent / base_path  # a relative base is relative to the profile that names it
    base_data, _ = _resolve(base, seen + (path.resolve(),))
    return _merge(base_data, data), path


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Load a profile by name (``smoke``, ``tiny``, ``paper``) or from a YAML path, resolving ``base``."""
    data, path = _resolve(name_or_path)
    missing = [key for key in REQUIRED_SECTIONS if key not in data]
    if missing:
        raise ValueError(f"profile {path} lacks required settings: {', '.join(missing)}")
    if data["kind"] not in ("world", "hub"):
        raise ValueError(
            f"profile {path}: kind must be 'world' (tiny synthetic world) or 'hub' (real models), got {data['kind']!r}"
        )
    upstream = data.get("upstream")
    if upstream is not None:
        if not isinstance(upstream, str) or not upstream.strip():
            raise ValueError(f"profile {path}: upstream must name a profile (a name or a YAML path), got {upstream!r}")
        if Path(upstream).suffix in (".yaml", ".yml") and not Path(upstream).is_absolute():
            # relative to the profile file, and absolute from here on (a saved copy elsewhere reads the same)
            data["upstream"] = str((path.parent / upstream).resolve())
    profile = Profile(data)
    profile.source_path = path.resolve()
    return profile


def save_profile(profile: Profile, path: str | os.PathLike) -> Path:
    """Write ``profile`` as it is in memory (a notebook's parameters and changes made in code included) to
    a YAML file that :func:`load_profile` reads back equal: how a launched process gets the caller's profile."""
    from .artifacts import atomic_write_text

    plain = yaml.safe_load(yaml.safe_dump(json.loads(json.dumps(dict(profile))), sort_keys=False))
    return atomic_write_text(path, yaml.safe_dump(plain, sort_keys=False))


def _is_project(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "segattr_utils").is_dir()


def find_project_root(start: str | os.PathLike | None = None) -> Path:
    """``$SEGATTR_ROOT``, else the folder holding ``pyproject.toml`` above ``start`` (default: cwd), else the
    checkout this package was imported from (an editable install run from elsewhere: a notebook kernel or an
    SFT subprocess whose working directory is a results folder outside the project)."""
    if os.environ.get("SEGATTR_ROOT"):
        return Path(os.environ["SEGATTR_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents, Path(__file__).resolve().parents[1]):
        if _is_project(folder):
            return folder
    raise FileNotFoundError("cannot find the segattr project root (pyproject.toml); set SEGATTR_ROOT")


def results_dir(profile: Profile, root: str | os.PathLike | None = None) -> Path:
    """``results/<profile>/`` under the project root (``results_root`` in the profile overrides)."""
    base = profile.get("results_root")
    root_path = Path(base) if base else find_project_root(root) / "results"
    return root_path / profile.name


def stage_dir(profile: Profile, stage: str, root: str | os.PathLike | None = None) -> Path:
    """The artifact folder of one stage, e.g. ``results/tiny/01_generation``; created if needed."""
    path = results_dir(profile, root) / stage
    path.mkdir(parents=True, exist_ok=True)
    return path
