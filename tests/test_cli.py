import pytest
from click.testing import CliRunner
from conftest import run_cli

from gptlab.cli import cli

SUBCOMMANDS = [
    "prepare",
    "init",
    "train",
    "eval",
    "generate",
    "demo",
    "export",
    "upload",
    "import-hf",
    "experiment",
    "compare",
    "report",
    "bench",
    "data",
    "notify",
    "cloud",
]


def test_top_level_help_lists_every_subcommand():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "model.json and train.json" in result.stdout
    listed = result.stdout.split("Commands:\n", 1)[1].splitlines()
    # exactly these: a sub-command removed, renamed or added without this list fails here
    assert sorted(line.split()[0] for line in listed if line.startswith("  ") and line.strip()) == sorted(SUBCOMMANDS)
    assert sorted(cli.commands) == sorted(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_explains_itself(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    assert "Usage: " in result.output and "--help" in result.output
    docstring_first_line = cli.commands[name].help.strip().splitlines()[0]
    assert docstring_first_line[:40] in " ".join(result.output.split())


def test_unknown_option_is_a_usage_error_without_traceback():
    result = run_cli("train", "--bogus")
    assert result.returncode == 2 and "No such option" in result.stderr and "Traceback" not in result.stderr
