"""Shared test settings: few threads, so a test run never fights itself for the two cores; and fixtures too
expensive to compute more than once per test session."""

import contextlib
import io

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
