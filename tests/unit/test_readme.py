"""What README.md shows is real: its config error is the one `retrain validate` prints for the
config it shows, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from retrain.cli import main
from retrain.config import example_yaml

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks_after(marker: str) -> list[tuple[str, str]]:
    """The fenced code blocks (language, text) that follow the line holding ``marker``."""
    start = README.index(marker)
    return re.findall(r"```(\w*)\n(.*?)```", README[start:], flags=re.S)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def test_the_readme_config_error_is_what_validate_prints_for_the_config_it_shows(
        tmp_path, monkeypatch, capsys):
    (lang, excerpt), (_, shown_error), *_ = _blocks_after("with two mistakes:")
    assert lang == "yaml"
    raw = _merge(yaml.safe_load(example_yaml("my-project")), yaml.safe_load(excerpt))
    (tmp_path / "retrain.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "--config", "retrain.yaml"]) == 2
    assert "(exit code 2)" in README
    assert capsys.readouterr().err == shown_error


def test_ci_runs_the_readme_test_command():
    (lang, command), *_ = _blocks_after("Run the test suite")
    assert lang == "bash"
    ci = (ROOT / ".ci" / "run").read_text()
    assert command.strip() in ci.splitlines()
    # in a fresh virtual environment made outside the checkout
    assert "mktemp -d" in ci and "-m venv" in ci and "/bin/activate" in ci
