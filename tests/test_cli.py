"""The ``segattr`` console script: subcommand registry, help, and ``segattr reproduce``."""

from __future__ import annotations

import argparse

import pytest

from segattr_utils import cli, reproduce


def _run(argv, capsys):
    """``cli.main(argv)``'s exit status (argparse's SystemExit included) and its stdout, stderr."""
    try:
        status = cli.main(argv)
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def calls(monkeypatch):
    """Replace the notebook runner: record the namespace ``segattr reproduce`` passes to it."""
    seen: list[argparse.Namespace] = []

    def fake_run(args):
        seen.append(args)
        return 0

    monkeypatch.setattr(reproduce, "run", fake_run)
    return seen


def test_help_lists_every_subcommand(capsys):
    status, out, _ = _run(["--help"], capsys)
    assert status == 0
    assert out.startswith("usage: segattr")
    assert "reproduce" in out
    words = " ".join(out.split())  # argparse wraps the summaries at the terminal width
    for command in cli.SUBCOMMANDS.values():
        assert command.name in words and command.help in words


def test_no_subcommand_prints_help_and_fails(capsys):
    status, out, err = _run([], capsys)
    assert status == 2
    assert "reproduce" in err and out == ""


def test_unknown_subcommand_is_an_error(capsys, calls):
    status, _, err = _run(["no-such-command"], capsys)
    assert status == 2 and "invalid choice" in err
    assert calls == []


def test_version(capsys):
    status, out, _ = _run(["--version"], capsys)
    assert status == 0 and out.startswith("segattr ")


def test_reproduce_help_shows_the_runner_options(capsys, calls):
    status, out, _ = _run(["reproduce", "--help"], capsys)
    assert status == 0
    assert out.startswith("usage: segattr reproduce")
    for option in ("--profile", "--only", "--nbval", "--fresh"):
        assert option in out
    assert calls == []


@pytest.mark.parametrize(
    "name, options",
    [
        (
            "score",
            ("--model", "--traces", "--out", "--n-steps", "--method", "--tau", "--beta", "--max-length", "--keywords"),
        ),
        ("view", ("--scores", "--trace", "--out")),
        ("export", ("--scores", "--out", "--format", "--mask", "--max-length", "--overlength")),
    ],
)
def test_bring_your_own_traces_subcommands_have_help(capsys, name, options):
    status, out, _ = _run([name, "--help"], capsys)
    assert status == 0 and out.startswith(f"usage: segattr {name}")
    description = cli.SUBCOMMANDS[name].description
    assert description.splitlines()[0] in out and "Example:" in out  # the module docstring heads the help
    for option in options:
        assert option in out


def test_reproduce_defaults_match_python_m_reproduce(calls):
    assert cli.main(["reproduce"]) == 0
    (args,) = calls
    expected = reproduce.build_parser().parse_args([])
    assert {k: getattr(args, k) for k in vars(expected)} == vars(expected)
    assert (args.profile, args.only, args.nbval, args.fresh) == ("tiny", None, False, False)


def test_reproduce_parses_options_and_calls_the_runner(calls):
    argv = ["--profile", "smoke", "--only", "02", "03", "--nbval", "--fresh"]
    assert cli.main(["reproduce", *argv]) == 0
    (args,) = calls
    assert (args.profile, args.only, args.nbval, args.fresh) == ("smoke", ["02", "03"], True, True)
    # The same options parse the same way through `python -m segattr_utils.reproduce`.
    direct = vars(reproduce.build_parser().parse_args(argv))
    assert {k: getattr(args, k) for k in direct} == direct


def test_reproduce_passes_the_runner_status_through(monkeypatch):
    monkeypatch.setattr(reproduce, "run", lambda args: 1)
    assert cli.main(["reproduce", "--profile", "smoke"]) == 1


def test_python_m_reproduce_main_uses_the_shared_runner(calls):
    assert reproduce.main(["--profile", "paper", "--fresh"]) == 0
    (args,) = calls
    assert (args.profile, args.only, args.nbval, args.fresh) == ("paper", None, False, True)


def test_adding_a_subcommand_is_one_decorated_function(monkeypatch, capsys):
    monkeypatch.setattr(cli, "SUBCOMMANDS", dict(cli.SUBCOMMANDS))
    seen = []

    def arguments(parser):
        parser.add_argument("--n", type=int, default=1)

    @cli.subcommand("echo-n", help="test subcommand", arguments=arguments)
    def echo_n(args):
        seen.append(args.n)

    assert cli.main(["echo-n", "--n", "3"]) == 0  # a handler returning None exits 0
    assert seen == [3]
    status, out, _ = _run(["--help"], capsys)
    assert status == 0 and "echo-n" in out and "test subcommand" in out and "reproduce" in out
    with pytest.raises(ValueError, match="registered twice"):
        cli.subcommand("echo-n", help="again")(echo_n)


def test_console_script_entry_point_is_cli_main():
    import importlib.metadata

    try:
        scripts = importlib.metadata.entry_points(group="console_scripts")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        pytest.skip("segattr is not installed")
    segattr = [ep for ep in scripts if ep.name == "segattr"]
    if not segattr:
        pytest.skip("segattr is not installed with its console script (pip install -e .)")
    assert segattr[0].value == "segattr_utils.cli:main"
    assert segattr[0].load() is cli.main


# ----------------------------------------------------------------------------------------------
# segattr estimate


R1_7B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 131072,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


@pytest.fixture
def model_folder(tmp_path):
    """A folder holding only the config.json of DeepSeek-R1-Distill-Qwen-7B (no weights, no tokenizer)."""
    import json

    (tmp_path / "config.json").write_text(json.dumps(R1_7B_CONFIG))
    return tmp_path


def test_estimate_prints_the_table_and_the_choice(capsys, model_folder):
    from transformers import Qwen2Config

    from segattr_utils.method.ig_cost import estimate_ig_cost

    status, out, err = _run(
        ["estimate", "--model", str(model_folder), "--seq-len", "16384", "--gpu-memory", "80", "--chunks", "1,2,4,8"],
        capsys,
    )
    assert status == 0, err
    assert "qwen2, 28 layers, hidden 3584" in out and "7.62B parameters" in out
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [(c, m) for m in ("no", "yes") for c in ("1", "2", "4", "8")]
    config = Qwen2Config(**R1_7B_CONFIG)
    for row in rows:
        cost = estimate_ig_cost(
            config, 16384, points_per_chunk=int(row[0]), activation_checkpointing=row[1] == "yes", n_steps=50
        )
        assert float(row[2]) == pytest.approx(cost.peak_bytes / 2**30, abs=0.06)
        assert row[3] == ("yes" if cost.peak_bytes <= 0.9 * 80 * 2**30 else "no")
    # plain IG of a 16k trace does not fit 80 GiB even with one point per pass; checkpointed 4 points do
    assert rows[0][3] == "no" and rows[6][3] == "yes" and rows[7][3] == "no"
    assert "choice: internal_batch_size=4, activation_checkpointing=true" in out


def test_estimate_when_nothing_fits(capsys, model_folder):
    status, out, _ = _run(
        ["estimate", "--model", str(model_folder), "--seq-len", "16384", "--gpu-memory", "16"], capsys
    )
    assert status == 1 and "none fits" in out


def test_estimate_offline_hub_id_fails_with_a_clear_message(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status, out, err = _run(
        ["estimate", "--model", "no-such-org/no-such-model", "--seq-len", "1024", "--gpu-memory", "80"], capsys
    )
    assert status == 2 and out == ""
    assert "HF_HUB_OFFLINE" in err and "config.json" in err and "no-such-org/no-such-model" in err


def test_estimate_unsupported_architecture(capsys, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    status, _, err = _run(["estimate", "--model", str(tmp_path), "--seq-len", "8", "--gpu-memory", "1"], capsys)
    assert status == 2 and "no IG cost model for model_type 'bert'" in err
