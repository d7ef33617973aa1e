"""The package's public names resolve lazily (retrain/__init__.py): a Ray trial process that
imports ``retrain.search`` must not pay for the pipeline, the registry or MLflow."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import retrain


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter (this one has imported everything already); it
    prints one JSON line, returned here."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_search_module_does_not_import_mlflow_or_the_pipeline():
    loaded = _fresh(
        "import json, sys\n"
        "import retrain.search\n"
        "print(json.dumps({m: m in sys.modules for m in "
        "('mlflow', 'retrain.pipeline', 'retrain.registry', 'retrain.evaluate')}))"
    )
    assert loaded == {"mlflow": False, "retrain.pipeline": False, "retrain.registry": False,
                      "retrain.evaluate": False}


def test_a_public_name_imports_only_its_own_module():
    loaded = _fresh(
        "import json, sys\n"
        "import retrain\n"
        "before = 'retrain.errors' in sys.modules\n"
        "retrain.RetrainError\n"
        "print(json.dumps({'before': before, 'errors': 'retrain.errors' in sys.modules,"
        " 'pipeline': 'retrain.pipeline' in sys.modules}))"
    )
    assert loaded == {"before": False, "errors": True, "pipeline": False}


@pytest.mark.parametrize("name", retrain.__all__)
def test_every_public_name_resolves_to_its_modules_object(name):
    value = getattr(retrain, name)
    module = importlib.import_module(retrain._EXPORTS[name])
    assert value is getattr(module, name)
    assert not isinstance(value, types.ModuleType)
    assert name in dir(retrain)


def test_all_the_export_table_and_the_typing_imports_agree():
    assert sorted(retrain.__all__) == sorted(retrain._EXPORTS) == retrain.__all__
    source = Path(retrain.__file__).read_text(encoding="utf-8")
    typing_block = source.split("if TYPE_CHECKING:", 1)[1].split("\n\n", 1)[0]
    for name in retrain.__all__:
        assert name in typing_block, f"{name} is missing from the TYPE_CHECKING imports"


def test_from_imports_and_star_import_work():
    from retrain import Ledger, Verdict, load_config

    assert Verdict.PROMOTE and Ledger and callable(load_config)
    namespace: dict = {}
    exec("from retrain import *", namespace)
    assert set(retrain.__all__) <= set(namespace)


def test_decide_stays_the_function_when_its_submodule_is_imported_first():
    # the pipeline imports retrain.decide before anyone reads retrain.decide: the name must
    # still be the public function, as with the eager package
    kinds = _fresh(
        "import json\n"
        "import retrain.decide\n"
        "from retrain.decide import decide as function\n"
        "import retrain\n"
        "from retrain import decide\n"
        "print(json.dumps({'attribute': retrain.decide is function, "
        "'from_import': decide is function}))"
    )
    assert kinds == {"attribute": True, "from_import": True}


def test_submodules_still_import_through_the_package():
    from retrain import ledger as module

    assert module is sys.modules["retrain.ledger"]


def test_an_unknown_attribute_raises_a_clear_attribute_error():
    with pytest.raises(AttributeError, match=r"no attribute 'no_such_name'.*retrain\.__all__"):
        retrain.no_such_name  # noqa: B018
    assert not hasattr(retrain, "run_cycles")
    with pytest.raises(ImportError):
        from retrain import no_such_name  # noqa: F401
