"""Every module imports on its own (no hidden import-order dependency, no import-time I/O)."""

import importlib
import pkgutil
import re

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
    assert {"began.train", "began.core.models", "began.metrics", "began.data"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_model_code_does_no_io_and_knows_no_tracking():
    source = importlib.import_module("began.core.models").__loader__.get_source("began.core.models")
    for forbidden in ("print(", "open(", "mlflow", "optuna", "logging"):
        assert forbidden not in source, forbidden


# Writing to MLflow goes through the tracker; the reports read it through one module.
MLFLOW_MODULES = {"began.tracking.mlflow_tracker", "analysis.store"}
MLFLOW_IMPORT = re.compile(r"^\s*(import|from) mlflow\b", re.MULTILINE)


def test_only_the_tracking_module_and_the_report_reader_import_mlflow():
    importers = set()
    for name in MODULES:
        if not name.startswith(("began.", "studies.", "analysis.")):
            continue
        source = importlib.import_module(name).__loader__.get_source(name) or ""
        if MLFLOW_IMPORT.search(source):
            importers.add(name)
    assert importers == MLFLOW_MODULES


def test_the_mlflow_import_check_sees_both_spellings():
    assert MLFLOW_IMPORT.search("x = 1\nfrom mlflow.entities import Metric\n")
    assert MLFLOW_IMPORT.search("    import mlflow.pytorch\n")
    assert not MLFLOW_IMPORT.search("# the mlflow store\nimport mlflowish\n")


def test_layers_import_downwards_only():
    """began/ never imports studies/ or analysis/; studies/ never imports analysis/."""
    for name in MODULES:
        source = importlib.import_module(name).__loader__.get_source(name) or ""
        if name.startswith("began."):
            assert "from studies" not in source and "import studies" not in source, name
            assert "from analysis" not in source and "import analysis" not in source, name
        if name.startswith("studies."):
            assert "from analysis" not in source and "import analysis" not in source, name
