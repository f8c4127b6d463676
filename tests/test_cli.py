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
