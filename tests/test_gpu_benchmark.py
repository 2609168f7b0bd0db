"""benchmarks/gpu.py at ``--size tiny --device cpu``: every section of its report, no host read added by a
recorded step, and the sync-debug bookkeeping of its CUDA path fed fake steps (no GPU needed)."""

import contextlib
import io
import re
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("gpu")


@pytest.fixture(scope="module")
def tiny_run(bench):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = bench.main(
            ["--device", "cpu", "--size", "tiny", "--steps", "1", "--rounds", "1", "--check-steps", "2"]
        )
    return results, printed.getvalue()


def test_report_has_every_section_for_both_cases(bench, tiny_run) -> None:
    results, text = tiny_run
    assert set(results) == {"resnet50", "gpt2s"}
    for case in ("resnet50", "gpt2s"):
        assert f"== {case} (tiny)" in text
    for section in ("step time", "host syncs", "ops per step", "sync debug mode is CUDA-only"):
        assert text.count(section) == 2, section
    for variant in bench.VARIANTS:
        assert len(re.findall(rf"^  {variant} +[0-9.]+ ms/step  ratio [0-9.]+", text, re.M)) == 2, variant
    for r in results.values():
        assert all(len(ts) == 1 and ts[0] > 0 for ts in r["times"].values())


def test_recorded_steps_read_nothing_on_the_host(bench, tiny_run) -> None:
    results, _ = tiny_run
    for name, r in results.items():
        reads = r["host_reads"]
        assert len(reads["recorded"]) == 2
        assert bench.added_reads(reads) == [0, 0], (name, reads)
    assert results["gpt2s"]["host_reads"]["bare"][0] > 0  # CPU AdamW reads its step counters: counted


def test_profiler_sees_the_recorded_step_and_nothing_on_unrecorded_ones(tiny_run) -> None:
    results, _ = tiny_run
    for r in results.values():
        ops = r["ops"]
        assert ops["recorded"]["aten ops"] > ops["bare"]["aten ops"]
        assert ops["unrecorded"]["aten ops"] == ops["bare"]["aten ops"]


def test_the_host_read_count_sees_one_item_per_weight_of_the_naive_monitor(bench) -> None:
    """The counter is not blind: the naive monitor's ``.item()`` per monitored weight is counted."""
    case = bench.build_case("gpt2s", "tiny", torch.device("cpu"))
    case.step()
    bare = bench._host_reads_of_step(case)
    naive = bench.NaiveMonitor(case.tensors, case.optimizer)
    with_naive = bench._host_reads_of_step(case)
    naive.close()
    assert with_naive - bare == len(case.tensors) == 4  # q and k of 2 blocks


def _warn_sync() -> None:
    warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)


def test_run_checked_sorts_warnings_errors_and_errors_the_monitor_caught(bench) -> None:
    clean = bench.run_checked(lambda: None, 3)
    assert clean == {"warned": 0, "by_monitor": 0, "error": None, "first": None}
    assert bench.run_checked(_warn_sync, 3)["warned"] == 3

    def raises() -> None:
        raise RuntimeError("called a synchronizing CUDA operation")

    err = bench.run_checked(raises, 3)
    assert err["error"].startswith("called a synchronizing CUDA operation (at ")
    assert err["first"] == err["error"]

    def caught() -> None:
        msg = "smdyn monitor skipped step 3: RuntimeError('called a synchronizing CUDA operation')"
        warnings.warn(msg, RuntimeWarning, stacklevel=1)

    by_monitor = bench.run_checked(caught, 2)
    assert by_monitor["by_monitor"] == 2 and by_monitor["warned"] == 0 and by_monitor["error"] is None
    assert by_monitor["first"].endswith("(caught by the monitor)")


def test_cuda_is_refused_without_a_device(bench) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda", "--size", "tiny"])


class _HostReadDebug(TorchDispatchMode):
    """A CPU stand-in for torch.cuda.set_sync_debug_mode: a host read warns or raises as a sync would."""

    def __init__(self, mode: str, host_reads: tuple[str, ...]) -> None:
        super().__init__()
        self.mode = mode
        self.host_reads = host_reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in self.host_reads:
            if self.mode == "error":
                raise RuntimeError("called a synchronizing CUDA operation")
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        return func(*args, **(kwargs or {}))


def test_cuda_sync_check_passes_the_monitor_and_fails_a_monitor_that_reads(bench, monkeypatch) -> None:
    """The CUDA path's logic on the CPU, host reads standing in for syncs: the monitor's recorded steps pass
    under "error" and are all recorded; the naive monitor's ``.item()`` per weight is caught."""
    monkeypatch.setattr(bench, "_sync_debug", lambda mode: _HostReadDebug(mode, bench.HOST_READS))
    case = bench.build_case("resnet50", "tiny", torch.device("cpu"))
    case.step()
    clean = bench.cuda_syncs(case, 1)
    assert clean["strict"]["first"] is None, clean
    assert clean["bare"]["warned"] == clean["first"]["warned"] == clean["later"]["warned"] == 0
    assert clean["recorded"] == 3  # bare steps are not recorded; first, later and strict ones are
    naive = bench.NaiveMonitor(case.tensors, case.optimizer)
    try:
        reading = bench.cuda_syncs(case, 1)
    finally:
        naive.close()
    assert reading["strict"]["error"].startswith("called a synchronizing CUDA operation")
    assert reading["later"]["warned"] == len(case.tensors) == 53  # one .item() per conv weight
