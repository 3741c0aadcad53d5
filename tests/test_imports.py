"""Every module imports on its own (no hidden import-order dependency, no import-time I/O)."""

import importlib
import pkgutil

import pytest

import analysis
import began
import bench
import studies

MODULES = sorted(
    info.name
    for package in (began, studies, analysis, bench)
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + ".")
)


def test_the_packages_have_modules():
    assert {"began.train", "began.models", "began.metrics", "began.data"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_model_code_does_no_io_and_knows_no_tracking():
    source = importlib.import_module("began.models").__loader__.get_source("began.models")
    for forbidden in ("print(", "open(", "mlflow", "optuna", "logging"):
        assert forbidden not in source, forbidden


def test_only_the_tracking_module_imports_mlflow():
    for name in MODULES:
        if name == "began.tracking" or not name.startswith("began."):
            continue
        source = importlib.import_module(name).__loader__.get_source(name) or ""
        assert "import mlflow" not in source, name


def test_layers_import_downwards_only():
    """began/ never imports studies/ or analysis/; studies/ never imports analysis/."""
    for name in MODULES:
        source = importlib.import_module(name).__loader__.get_source(name) or ""
        if name.startswith("began."):
            assert "from studies" not in source and "import studies" not in source, name
            assert "from analysis" not in source and "import analysis" not in source, name
        if name.startswith("studies."):
            assert "from analysis" not in source and "import analysis" not in source, name
