"""Shared test settings: few threads, so a test run never fights itself for the two cores; and fixtures too
expensive to compute more than once per test session."""

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def quick_simulation(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``smdyn simulate --quick`` run once per test session (tens of seconds) and shared by every test that
    reads its report: ``out`` (the folder), ``path`` (simulation_report.md), ``stdout`` (what it printed)
    and ``rc`` (its exit status)."""
    from smdyn.cli import main

    out = tmp_path_factory.mktemp("simulate-quick")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["simulate", "--quick", "--out", str(out)])
    return {"out": out, "path": out / "simulation_report.md", "stdout": printed.getvalue(), "rc": rc}


@pytest.fixture(scope="session")
def load_benchmark():
    """Imports ``benchmarks/<name>.py`` (not a package) by its path: ``load_benchmark("gpu")``."""

    def load(name: str):
        path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
        return module

    return load
