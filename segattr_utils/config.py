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
import difflib
import json
import os
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .profile_schema import OMIT_UNSET, ProfileSchema

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
    "analysis",
    "judge",
    "training",
    "evaluation",
)


class ProfileError(ValueError):
    """A profile that cannot run: an unknown key, a wrong type, a value out of range, a missing setting.
    Its message is one line naming the setting and the file."""


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
        raise ProfileError(f"profile file {path} must hold a mapping")
    return data, path


def _resolve(name_or_path: str | os.PathLike, seen: tuple[Path, ...] = ()) -> tuple[dict, list[tuple[Path, dict]]]:
    """The profile merged over its ``base`` chain, and each file of the chain with its own keys (the
    loaded file first)."""
    data, path = _read_profile_file(name_or_path)
    if path.resolve() in seen:
        raise ProfileError(f"profile {path} has a cyclic 'base' chain")
    base = data.pop("base", None)
    check_keys(data, path)
    if base is None:
        return data, [(path, data)]
    base_path = Path(base)
    if base_path.suffix in (".yaml", ".yml") and not base_path.is_absolute():
        base = path.parent / base_path  # a relative base is relative to the profile that names it
    base_data, chain = _resolve(base, seen + (path.resolve(),))
    return _merge(base_data, data), [(path, data), *chain]


def _label(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def _nearest(name: str, choices) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean `{match[0]}`?" if match else f"; valid: {', '.join(choices)}"


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model of a field (``Section | None`` and ``list[Section]`` included); None for a leaf
    or an open mapping."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is dict:
        return None
    for argument in typing.get_args(annotation):
        found = _section_model(argument)
        if found is not None:
            return found
    return None


def check_keys(data: dict, path: Path, model: type[BaseModel] = ProfileSchema, prefix: tuple = ()) -> None:
    """Reject a key of one profile file that the schema does not know, naming the file and the nearest
    valid name (a partial file: required settings may come from its base)."""
    known = model.model_fields
    if model.model_config.get("extra") != "allow":  # an open section passes its other keys on
        for key in data:
            if key not in known:
                raise ProfileError(f"unknown setting {_label((*prefix, key))} in {path}{_nearest(str(key), known)}")
    for key, value in data.items():
        field = known.get(key)
        sub = _section_model(field.annotation) if field is not None else None
        if sub is None:
            continue
        if isinstance(value, dict):
            check_keys(value, path, sub, (*prefix, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    check_keys(item, path, sub, (*prefix, key, index))


def _origin(loc: tuple, chain: list[tuple[Path, dict]]) -> Path:
    """The file of the chain that sets the setting at ``loc`` (the loaded file when none does)."""
    for path, data in chain:
        node: Any = data
        for part in loc:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                break
        else:
            return path
    return chain[0][0]


def _location(error: dict) -> tuple:
    """The setting an error is about: pydantic adds the member of a union it tried (``int``,
    ``constrained-int``, ``literal['auto']``, a section's class name) to the location."""
    return tuple(
        part
        for part in error["loc"]
        if isinstance(part, int) or not (part in _TYPE_NAMES or "-" in part or "[" in part or part[:1].isupper())
    )


_TYPE_NAMES = {"int", "float", "str", "bool", "list", "dict", "none"}


def _error_message(errors: list[dict], chain: list[tuple[Path, dict]]) -> str:
    error = errors[0]
    loc = _location(error)
    if error["type"] == "missing":
        return f"profile {chain[0][0]} lacks required setting {_label(loc)}"
    if not loc:  # a whole-profile rule (ProfileSchema's validator)
        return f"profile {chain[0][0]}: {error['msg'].removeprefix('Value error, ')}"
    # every member of a union rejected the value: say what each would take
    reasons = list(dict.fromkeys(e["msg"].lower() for e in errors if _location(e) == loc))
    return f"setting {_label(loc)} in {_origin(loc, chain)}: {' or '.join(reasons)} (got {error['input']!r})"


def validate_profile(data: dict, chain: list[tuple[Path, dict]]) -> dict:
    """``data`` (a profile merged over its base chain) checked against :class:`ProfileSchema`, with the
    defaults of the settings it leaves out filled in; its own values are kept as written."""
    try:
        schema = ProfileSchema.model_validate(data)
    except ValidationError as failure:
        errors = failure.errors(include_url=False)
        missing = [e for e in errors if e["type"] == "missing"]
        if len(missing) > 1:
            names = ", ".join(_label(_location(e)) for e in missing)
            raise ProfileError(f"profile {chain[0][0]} lacks required settings: {names}") from None
        raise ProfileError(_error_message(missing or errors, chain)) from None
    complete = _complete(data, schema)
    training = complete["training"]
    if training["ablation_source"] is None:  # read by stages 08-09 and the headlines: resolved here
        training["ablation_source"] = training["sources"][0]
    return complete


def _complete(data: dict, model: BaseModel) -> dict:
    """``data`` with every unset field of ``model`` that has a default added (in the schema's order after
    the file's own keys); optional fields stay unset."""
    out = dict(data)
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if name in data:
            if isinstance(value, BaseModel) and isinstance(data[name], dict):
                out[name] = _complete(data[name], value)
            continue
        if (field.json_schema_extra or {}).get(OMIT_UNSET):
            continue
        out[name] = value.model_dump(exclude_none=False) if isinstance(value, BaseModel) else copy.deepcopy(value)
        if isinstance(value, BaseModel):
            out[name] = _complete({}, value)
    return out


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Load a profile by name (``smoke``, ``tiny``, ``paper``) or from a YAML path, resolving ``base``,
    validated against :mod:`segattr_utils.profile_schema` and complete (every default filled in).
    Raises :class:`ProfileError` (a ``ValueError``) naming the setting and the file."""
    data, chain = _resolve(name_or_path)
    path = chain[0][0]
    missing = [key for key in REQUIRED_SECTIONS if key not in data]
    if missing:
        raise ProfileError(f"profile {path} lacks required settings: {', '.join(missing)}")
    if data["kind"] not in ("world", "hub"):
        raise ProfileError(
            f"profile {path}: kind must be 'world' (tiny synthetic world) or 'hub' (real models), got {data['kind']!r}"
        )
    upstream = data.get("upstream")
    if upstream is not None:
        if not isinstance(upstream, str) or not upstream.strip():
            raise ProfileError(
                f"profile {path}: upstream must name a profile (a name or a YAML path), got {upstream!r}"
            )
        if Path(upstream).suffix in (".yaml", ".yml") and not Path(upstream).is_absolute():
            # relative to the profile file, and absolute from here on (a saved copy elsewhere reads the same)
            data["upstream"] = str((path.parent / upstream).resolve())
    profile = Profile(validate_profile(data, chain))
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
