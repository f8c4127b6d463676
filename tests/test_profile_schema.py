"""The profile schema: packaged and test profiles validate to their former values; bad settings fail at load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segattr_utils.config import ProfileError, available_profiles, load_profile, save_profile
from segattr_utils.profile_schema import ProfileSchema

ROOT = Path(__file__).resolve().parents[1]
#: The packaged profiles and the paper dry run's profile as the loader before the schema resolved them.
SNAPSHOTS = json.loads((ROOT / "tests" / "fixtures" / "profile_snapshots.json").read_text(encoding="utf-8"))


def _contains(expected: dict, actual: dict, prefix: str = "") -> list[str]:
    """Settings of ``expected`` that ``actual`` lacks or holds another value (or type) of."""
    wrong = []
    for key, value in expected.items():
        name = prefix + key
        if key not in actual:
            wrong.append(f"{name} missing")
        elif isinstance(value, dict) and isinstance(actual[key], dict):
            wrong += _contains(value, actual[key], name + ".")
        elif value != actual[key] or type(value) is not type(actual[key]):
            wrong.append(f"{name}: {value!r} -> {actual[key]!r}")
    return wrong


@pytest.mark.parametrize("name", sorted(set(SNAPSHOTS) - {"paper-dry-run"}))
def test_packaged_profiles_keep_their_values(name):
    assert _contains(SNAPSHOTS[name], dict(load_profile(name))) == []


def test_snapshots_cover_every_packaged_profile():
    assert set(available_profiles()) <= set(SNAPSHOTS)


def test_dry_run_profile_keeps_its_values(tmp_path):
    from tests.dry_run.fixtures import BENCHMARK_FILES, dry_run_profile

    models = {role: Path(f"/stand-ins/models/{role}") for role in ("generator", "student", "judge")}
    data = {"train": Path("/stand-ins/data/LIMO/train.jsonl")}
    data.update({name: Path("/stand-ins/data") / file for name, file in BENCHMARK_FILES.items()})
    spec = dry_run_profile(models, data, Path("/stand-ins/accelerate_cpu.yaml"), Path("/stand-ins/results"))
    path = tmp_path / "paper-dry-run.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    assert _contains(SNAPSHOTS["paper-dry-run"], dict(load_profile(path))) == []


def test_import_profile_validates(tmp_path):
    from tests.fixtures.r1_traces import write_import_profile

    profile = load_profile(write_import_profile(tmp_path))
    assert profile.get_path("data.traces.outputs") == "all"


#: The defaults the code used to apply where a profile left a setting out (the former call sites'
#: literals), now filled in by the schema.
FORMER_CODE_DEFAULTS = {
    "tiny": {
        "generation.vllm_chunk_requests": 2048,  # services: DEFAULT_CHUNK_REQUESTS
        "generation.vllm": {},  # services: get_path("generation.vllm", {})
        "models.generator.device_map": None,  # stage 03: get_path(..., None)
        "training.gpus": None,
        "training.accelerate_config": None,
        "training.deepspeed_config": None,
        "training.table7_source": None,  # null: the ablation source (services.table_sources)
        "world.train_from_pretrain": False,
        "world.seed": None,  # stage 00: unset = the profile's seed
        "attribution.memory_budget_gb": None,
        "analysis.linguistics.processes": 1,  # distributed.resolve_processes: settings.get("processes", 1)
    },
    "paper": {
        "training.table7_source": None,
        "training.processes": 1,
        "evaluation.processes": 1,
        "attribution.threads_per_process": None,
        "upstream": None,
        "results_root": None,
    },
}


@pytest.mark.parametrize("name", sorted(FORMER_CODE_DEFAULTS))
def test_left_out_settings_get_the_former_code_defaults(name):
    profile = load_profile(name)
    for dotted, value in FORMER_CODE_DEFAULTS[name].items():
        assert profile.get_path(dotted) == value, dotted


def test_dependent_defaults(tmp_path):
    """Null settings whose default depends on another: ablation_seeds (main_seeds), ablation_source (the
    first source), table7_source (the ablation source), a model's dtype (float32 world, bfloat16 hub).
    They stay null in the profile, so a profile changed in code resolves them from the changed values."""
    from segattr_utils import services
    from segattr_utils.stages import stage08_selective_sft as stage08

    tiny = yaml.safe_load((ROOT / "segattr_utils" / "profiles" / "tiny.yaml").read_text(encoding="utf-8"))
    for key in ("ablation_seeds", "ablation_source"):
        del tiny["training"][key]
    tiny["training"]["sources"] = ["reference", "self"]
    tiny["training"]["main_seeds"] = [5, 6]
    del tiny["models"]["generator"]["dtype"]
    tiny["training"]["tables"] = ["2", "7"]
    profile = load_profile(_write(tmp_path / "mine.yaml", tiny))
    assert profile.get_path("training.ablation_seeds") is None
    assert profile.get_path("training.table7_source") is None
    assert services.table_sources(profile) == {"2": "reference", "7": "reference"}
    assert {r.seed for r in stage08.plan_runs(profile) if r.variant == "random_segments"} == {5, 6}
    assert services._dtype(profile, "generator") == "float32"
    hub = load_profile(_write(tmp_path / "hub.yaml", {"base": "paper", "models": {"judge": {"dtype": None}}}))
    assert services._dtype(hub, "judge") == "bfloat16"


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _error(tmp_path: Path, data: dict, name: str = "my.yaml") -> str:
    path = _write(tmp_path / name, data)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, ValueError)
    return message


def test_misspelt_key_names_the_key_the_file_and_the_nearest_name(tmp_path):
    message = _error(tmp_path, {"base": "tiny", "name": "mine", "selection": {"tua": 0.5}})
    assert "selection.tua" in message and str(tmp_path / "my.yaml") in message
    assert "did you mean `tau`?" in message


def test_misspelt_key_in_a_base_names_the_base_file(tmp_path):
    middle = _write(tmp_path / "middle.yaml", {"base": "paper", "name": "middle", "training": {"tocken_share": 0.5}})
    message = _error(tmp_path, {"base": str(middle), "name": "top"}, "top.yaml")
    assert "training.tocken_share" in message and str(middle) in message and "`token_share`" in message


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"selection": {"tau": 1.5}}, "selection.tau"),
        ({"selection": {"beta": "high"}}, "selection.beta"),
        ({"analysis": {"groups_tau": 0}}, "analysis.groups_tau"),
        ({"attribution": {"processes": "many"}}, "attribution.processes"),
        ({"attribution": {"n_steps": 0}}, "attribution.n_steps"),
        ({"training": {"sources": ["slef"]}}, "training.sources.0"),
        ({"training": {"token_share": 1.2}}, "training.token_share"),
        ({"evaluation": {"ks": [0]}}, "evaluation.ks.0"),
        ({"generation": {"n_samples": True}}, "generation.n_samples"),
        ({"world": {"rates": {"repetition": "often"}}}, "world.rates.repetition"),
        ({"analysis": {"faithfulness": {"budgets": []}}}, "analysis.faithfulness.budgets"),
    ],
)
def test_wrong_type_or_range_names_the_key_and_the_file(tmp_path, override, key):
    message = _error(tmp_path, {"base": "tiny", "name": "mine", **override})
    assert f"setting {key} in {tmp_path / 'my.yaml'}" in message


def test_a_base_override_is_validated_the_same_way(tmp_path):
    """The override file's keys, and the merged profile's values, as a file without base."""
    _write(tmp_path / "base.yaml", {"base": "tiny", "name": "base", "selection": {"tau": 0.6}})
    message = _error(tmp_path, {"base": "base.yaml", "name": "top", "selection": {"beat": 0.5}}, "top.yaml")
    assert "selection.beat" in message and "top.yaml" in message and "`beta`" in message
    bad_base = _write(tmp_path / "bad_base.yaml", {"base": "tiny", "name": "bad", "selection": {"tau": 2.0}})
    message = _error(tmp_path, {"base": str(bad_base), "name": "top2"}, "top2.yaml")
    assert f"setting selection.tau in {bad_base}" in message  # the file that set it
    assert (
        load_profile(_write(tmp_path / "ok.yaml", {"base": "base.yaml", "name": "ok"})).get_path("selection.tau") == 0.6
    )


def test_missing_setting_and_whole_profile_rules(tmp_path):
    tiny = yaml.safe_load((ROOT / "segattr_utils" / "profiles" / "tiny.yaml").read_text(encoding="utf-8"))
    del tiny["analysis"]["groups_beta"]
    assert "lacks required setting analysis.groups_beta" in _error(tmp_path, tiny)
    message = _error(tmp_path, {"base": "paper", "name": "x", "kind": "world"}, "x.yaml")
    assert "kind world needs a world section" in message


def test_open_mappings_accept_any_key(tmp_path):
    profile = load_profile(
        _write(
            tmp_path / "open.yaml",
            {"base": "paper", "name": "open", "generation": {"vllm": {"max_num_seqs": 256, "enforce_eager": True}}},
        )
    )
    assert profile.get_path("generation.vllm.max_num_seqs") == 256  # passed to vllm.LLM as it is
    tiny = load_profile(
        _write(tmp_path / "arch.yaml", {"base": "tiny", "models": {"architecture": {"rope_theta": 1e4}}})
    )
    assert tiny.get_path("models.architecture.rope_theta") == 1e4  # a Qwen2Config argument


def test_saved_profile_round_trips(tmp_path):
    for name in ("tiny", "paper", "paper-qwen25-7b-instruct"):
        profile = load_profile(name)
        again = load_profile(save_profile(profile, tmp_path / f"{name}.yaml"))
        assert dict(again) == dict(profile) and again.name == name


def test_the_two_tau_beta_pairs_say_what_they_decide():
    selection = ProfileSchema.model_fields["selection"].annotation.model_fields
    analysis = ProfileSchema.model_fields["analysis"].annotation.model_fields
    for key in ("tau", "beta"):
        assert selection[key].description.startswith(
            f"selection.{key}: which segments selective SFT trains on (Eq. 6-7)"
        )
        assert analysis[f"groups_{key}"].description.startswith(
            f"analysis.groups_{key}: the important/unimportant groups of the analyses (Figs. 2-3, notebook 07)"
        )


def test_every_setting_has_a_description():
    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            sub = field.annotation
            candidates = [sub, *getattr(sub, "__args__", ())]
            nested = [c for c in candidates if isinstance(c, type) and hasattr(c, "model_fields")]
            if nested:
                yield from walk(nested[0], f"{prefix}{name}.")
            elif not field.description:
                yield prefix + name

    assert list(walk(ProfileSchema)) == []


def test_reproduce_rejects_a_bad_profile_before_any_notebook(tmp_path):
    bad = _write(tmp_path / "bad.yaml", {"base": "tiny", "name": "bad", "selection": {"tua": 0.5}})
    finished = subprocess.run(
        [sys.executable, "-m", "segattr_utils.reproduce", "--profile", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"SEGATTR_ROOT": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert finished.returncode == 2
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1 and "selection.tua" in lines[0] and "did you mean `tau`?" in lines[0]
    assert "Traceback" not in finished.stderr and finished.stdout == ""
    assert not (ROOT / "results" / "bad").exists()  # nothing ran
