"""CI runs exactly the README's test command: keep the two in step."""

import locations

REPO = locations.ROOT


def _readme_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    return [line.strip() for line in lines if line.strip().startswith("python3 -m venv")]


def test_readme_starts_with_two_setup_commands():
    commands = _readme_commands()
    assert len(commands) >= 2
    assert "cm3leon_jax.demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in [line.strip() for line in ci]
