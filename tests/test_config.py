"""Tests for segattr_utils.config: packaged profiles, ``base`` inheritance, validation, project root."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segattr_utils import config
from segattr_utils.config import (
    Profile,
    available_profiles,
    find_project_root,
    load_profile,
    results_dir,
)

REQUIRED = ("name", "seed", "kind", "world", "models", "generation", "segmentation", "attribution", "selection")


def _raw(name):
    return yaml.safe_load((config.PROFILE_DIR / f"{name}.yaml").read_text())


def test_available_profiles():
    assert {"smoke", "tiny", "paper"} <= set(available_profiles())


@pytest.mark.parametrize("name", ["smoke", "tiny", "paper"])
def test_packaged_profiles_load(name):
    profile = load_profile(name)
    assert isinstance(profile, Profile) and isinstance(profile, dict)
    assert profile.name == name
    for key in REQUIRED:
        assert key in profile
    assert "base" not in profile
    assert profile["kind"] in ("world", "hub")


def test_tiny_profile_values():
    tiny = load_profile("tiny")
    assert tiny["kind"] == "world"
    assert tiny.get_path("world.n_train") == 128
    assert tiny.get_path("world.test_ood_ops") == [5, 6]
    assert tiny.get_path("generation.backend") == "hf"
    assert tiny.get_path("selection.tau") == 0.7


def test_smoke_inherits_from_tiny():
    smoke, tiny = load_profile("smoke"), load_profile("tiny")
    raw = _raw("smoke")
    assert raw["base"] == "tiny"
    assert smoke["kind"] == "world"
    # overridden values
    for key in ("world.n_train", "generation.n_samples", "models.architecture.hidden_size"):
        section, name = key.rsplit(".", 1)
        node = raw
        for part in section.split("."):
            node = node[part]
        assert smoke.get_path(key) == node[name] != tiny.get_path(key)
    # keys smoke does not set are tiny's, also inside partially overridden sections
    assert "rates" not in raw["world"]
    assert smoke.get_path("world.rates") == tiny.get_path("world.rates")
    assert smoke.get_path("world.rates.repetition") == 0.3
    assert "temperature" not in raw["generation"]
    assert smoke.get_path("generation.temperature") == tiny.get_path("generation.temperature") == 0.6
    assert smoke.get_path("world.pretrain_ops") == [2, 3, 4]
    assert smoke["selection"] == tiny["selection"]
    assert smoke.get_path("models.architecture.tie_word_embeddings") is True
    assert smoke.get_path("models.generator.id") == "tiny-r1-qwen2"
    assert smoke.get_path("attribution.method") == tiny.get_path("attribution.method")


def test_loading_smoke_does_not_mutate_tiny():
    smoke = load_profile("smoke")
    smoke["world"]["rates"]["repetition"] = 99
    assert load_profile("tiny").get_path("world.rates.repetition") == 0.3
    assert load_profile("smoke").get_path("world.rates.repetition") == 0.3


def test_paper_profile_has_the_papers_settings():
    paper = load_profile("paper")
    assert paper["kind"] == "hub"
    assert paper.get_path("models.generator.id") == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    assert paper.get_path("models.judge.id") == "Qwen/Qwen3-8B"
    assert paper.get_path("data.train.hub_id") == "GAIR/LIMO"
    assert paper.get_path("generation.n_samples") == 32
    assert paper.get_path("generation.temperature") == 0.6
    assert paper.get_path("generation.max_new_tokens") == 32768
    assert paper.get_path("attribution.n_steps") == 50
    assert paper.get_path("attribution.max_length") is None  # the authors attribute every trace
    assert paper.get_path("training.sft.max_length") == 16384
    assert paper.get_path("selection.tau") == 0.7
    assert paper.get_path("selection.beta") == 0.8
    assert paper.get_path("models.generator.local_path") is None


def test_get_path_errors_and_default():
    tiny = load_profile("tiny")
    with pytest.raises(KeyError) as info:
        tiny.get_path("attribution.no_such_setting")
    assert "attribution.no_such_setting" in str(info.value)
    assert "tiny" in str(info.value)
    with pytest.raises(KeyError, match="nowhere.deep"):
        tiny.get_path("nowhere.deep")
    # walking into a leaf
    with pytest.raises(KeyError, match="seed.x"):
        tiny.get_path("seed.x")
    assert tiny.get_path("attribution.no_such_setting", default=None) is None
    assert tiny.get_path("a.b.c", default=3) == 3


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_custom_yaml_with_named_base(tmp_path):
    path = _write(
        tmp_path / "mine.yaml",
        {"base": "tiny", "name": "mine", "generation": {"n_samples": 3}, "attribution": {"n_steps": 5}},
    )
    profile = load_profile(path)
    assert profile.name == "mine"
    assert profile.get_path("generation.n_samples") == 3
    assert profile.get_path("generation.max_new_tokens") == 400  # from tiny
    assert profile.get_path("attribution.n_steps") == 5
    assert profile.get_path("attribution.method") == "gausslegendre"
    # a str path works too
    assert load_profile(str(path)) == profile


def test_custom_yaml_chain_of_bases(tmp_path):
    middle = _write(tmp_path / "middle.yml", {"base": "paper", "name": "middle", "selection": {"tau": 0.5}})
    top = _write(tmp_path / "top.yaml", {"base": str(middle), "name": "top", "generation": {"n_samples": 4}})
    profile = load_profile(top)
    assert profile.name == "top"
    assert profile["kind"] == "hub"
    assert profile.get_path("selection.tau") == 0.5
    assert profile.get_path("selection.beta") == 0.8
    assert profile.get_path("generation.n_samples") == 4
    assert profile.get_path("generation.max_new_tokens") == 32768


def test_custom_yaml_without_base(tmp_path):
    data = dict(_raw("tiny"))  # every section: the schema has no defaults for most of them
    data["name"] = "standalone"
    profile = load_profile(_write(tmp_path / "standalone.yaml", data))
    assert profile.name == "standalone"


def test_unknown_profile_lists_available():
    with pytest.raises(FileNotFoundError) as info:
        load_profile("no_such_profile")
    message = str(info.value)
    assert "no_such_profile" in message
    for name in ("paper", "smoke", "tiny"):
        assert name in message


def test_missing_yaml_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_profile(tmp_path / "absent.yaml")


def test_missing_required_keys(tmp_path):
    path = _write(tmp_path / "partial.yaml", {"name": "partial", "seed": 0, "kind": "world"})
    with pytest.raises(ValueError) as info:
        load_profile(path)
    for key in ("models", "generation", "selection"):
        assert key in str(info.value)


def test_invalid_kind_and_non_mapping(tmp_path):
    with pytest.raises(ValueError):
        load_profile(_write(tmp_path / "k.yaml", {"base": "tiny", "kind": "cloud"}))
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError):
        load_profile(bad)


def test_cyclic_base(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    _write(a, {"base": str(b), "name": "a"})
    _write(b, {"base": str(a), "name": "b"})
    with pytest.raises(ValueError, match="cyclic"):
        load_profile(a)
    selfref = tmp_path / "self.yaml"
    _write(selfref, {"base": str(selfref), "name": "self"})
    with pytest.raises(ValueError, match="cyclic"):
        load_profile(selfref)


def test_find_project_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGATTR_ROOT", str(tmp_path))
    assert find_project_root() == tmp_path.resolve()
    assert find_project_root(start="/") == tmp_path.resolve()


def test_find_project_root_search(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGATTR_ROOT", raising=False)
    project = tmp_path / "proj"
    (project / "segattr_utils").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname='x'\n")
    deep = project / "notebooks" / "sub"
    deep.mkdir(parents=True)
    assert find_project_root(deep) == project.resolve()
    monkeypatch.chdir(deep)
    assert find_project_root() == project.resolve()
    # a pyproject.toml without the package folder is not the project: outside any project, the checkout the
    # package was imported from is (an SFT subprocess started in a results folder outside the project)
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text("")
    checkout = Path(config.__file__).resolve().parents[1]
    assert find_project_root(other) == checkout
    monkeypatch.setattr(config, "__file__", str(other / "segattr_utils" / "config.py"))
    with pytest.raises(FileNotFoundError, match="SEGATTR_ROOT"):
        find_project_root(other)


def test_results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGATTR_ROOT", str(tmp_path))
    tiny = load_profile("tiny")
    assert results_dir(tiny) == tmp_path.resolve() / "results" / "tiny"
    custom = Profile(dict(tiny, results_root=str(tmp_path / "elsewhere")))
    assert results_dir(custom) == tmp_path / "elsewhere" / "tiny"
