"""The monitor on a CUDA device: host syncs on recorded steps, kernel launches per step, and its overhead.

A recorded step that is not a flush must never make the host wait for the device, and should cost little.
This script checks both on two networks of the size people train on one GPU:

  resnet50  ResNet-50 (smdyn.experiments.models.ResNet50, 1000 classes), batch 256, 224×224 random images,
            channels_last, bf16 autocast, SGD lr 0.1, momentum 0.9, weight decay 1e-4 (Goyal et al. 2017's
            per-256 setting), cudnn.benchmark on; cross-entropy on random labels.
  gpt2s     GPT-2 small in shape (smdyn.experiments.gpt.gpt): 12 blocks, width 768, 12 heads, context 1024,
            vocabulary 50,304 (GPT-2's 50,257 rounded up to a multiple of 64), tied embeddings, QK-LayerNorm
            (which makes q and k scale-invariant: the 24 weights monitored), batch 32 × 1024 tokens (about
            0.63 MB of saved activations a token under bf16 autocast, measured on the CPU: ~21 GB, ~40 GB at
            the peak of backward by estimate, so an 80 GB card holds it), AdamW lr 6e-4, betas (0.9, 0.95),
            weight decay 0.1; next-token cross-entropy on random tokens.

Inputs are drawn once on the device and reused, so no data loading is timed. The optimizers use torch's
default implementation for the device (foreach on CUDA, a per-tensor loop on the CPU). ``--size tiny``
shrinks both to seconds on a CPU (ResNet-50 at 32×32, 10 classes, batch 2; a GPT of 2 blocks × 64 wide,
4 heads, 64 tokens, vocabulary 256, batch 2): it exercises every path of the script, its numbers mean nothing.

What is printed, per case:

  step time    variants interleaved round by round (the order rotates, as in benchmarks/overhead.py):
               bare (the step alone), smdyn (SphericalMonitor recording every step), every10 (recording
               every 10th step) and naive (a clone of each monitored weight, float32 acos and ``.item()`` per
               weight: overhead.py's NaiveMonitor). Each round times ``--steps`` steps between
               torch.cuda.synchronize() calls (wall clock; on the CPU no sync is needed). The smdyn variants'
               timed region ends with ``monitor.flush()``: one transfer to the host per round, i.e. per
               ``--steps`` recorded steps, more often than in use (flush_every=100), so the ratio errs high.
               Printed: the median ms/step over rounds and the ratio to bare of the same round, median
               [min–max] over rounds.
  host syncs   CUDA, with a freshly attached monitor that does not flush during the check:
               ``torch.cuda.set_sync_debug_mode("error")`` held around ``optimizer.step()`` (where the
               monitor's hooks run, and only there) of ``--check-steps`` recorded steps, the previous mode
               restored after: "0 syncs", or the first error and the innermost smdyn frame it came from. The
               monitor never lets an error out of its hooks: one it caught (its "smdyn monitor skipped step"
               warning) is reported as the error. Mode "warn" over whole steps counts the syncs of bare steps,
               of the monitor's first recorded step (the first case's is the process's first: one-time set-up
               may copy a constant to the device there) and of the recorded steps after it.
               Every device: host reads counted by a TorchDispatchMode (``.item()``, ``_local_scalar_dense``,
               ``is_nonzero``, ``equal``: the ops that hand a device value to Python), per step, for bare
               steps and for the monitor's recorded steps; "added" is the difference. On the CPU this count is
               the only check (sync debug mode is CUDA-only) and a bare AdamW step reads its step counters.
  ops per step from torch.profiler over ``--check-steps`` steps: aten ops (outermost ones: those a Python
               caller dispatched) on every device; on CUDA also kernels and copies run on the device, kernel
               launch calls and stream/event synchronisations on the host. For a bare step, a recorded step
               (monitor every step) and an unrecorded one (every 10th, between recordings); the differences
               are printed per recorded step and per monitored tensor.

Usage:
  PYTHONPATH=src python benchmarks/gpu.py [--device cuda|cpu] [--case resnet50 gpt2s] [--steps 20]
      [--rounds 5] [--check-steps 3] [--size full|tiny]
  (a full run of both cases takes a few minutes on an H100/H200-class GPU)

Result on this machine: not yet run on a GPU.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

import smdyn
from smdyn import SphericalMonitor
from smdyn.experiments.gpt import gpt
from smdyn.experiments.models import ResNet50


def _sibling(name: str) -> Any:
    """Import another benchmark script of this folder by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"_benchmarks_{name}", Path(__file__).with_name(f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NaiveMonitor = _sibling("overhead").NaiveMonitor

CASES = ("resnet50", "gpt2s")
VARIANTS = ("bare", "smdyn", "every10", "naive")
HOST_READS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal")
_SYNC_WORDS = "synchroniz"  # in torch's sync-debug message: "called a synchronizing CUDA operation"
_CAUGHT_BY_MONITOR = "smdyn monitor"  # the monitor's warning when it caught an error and skipped a step


@dataclass
class Case:
    """A model, its optimizer and one training step on fixed device inputs."""

    name: str
    description: str
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[..., None]  # step(guard=nullcontext): guard() is entered around optimizer.step() alone
    names: list[str]  # monitored units, as names SphericalMonitor resolves (weight+bias pairs joined by +)
    tensors: list[nn.Parameter]  # every monitored tensor (what the naive monitor clones)


# ---------------------------------------------------------------------------------------------- cases


def _training_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> Callable[..., None]:
    def step(guard: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        with guard():
            opt.step()

    return step


def build_case(name: str, size: str, device: torch.device) -> Case:
    """The case ``name`` at ``size`` ("full" or "tiny") on ``device``, with its monitored weights found."""
    torch.manual_seed(0)
    full = size == "full"
    if name == "resnet50":
        classes, batch, pixels = (1000, 256, 224) if full else (10, 2, 32)
        model = ResNet50(classes).to(device, memory_format=torch.channels_last)
        x = torch.randn(batch, 3, pixels, pixels, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(classes, (batch,), device=device)
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4
        )
        example = None  # fx traces ResNet-50: no forward pass is needed to find its invariant weights
        what = f"ResNet-50, batch {batch}, {pixels}×{pixels}, channels_last, bf16 autocast, SGD-momentum"
    elif name == "gpt2s":
        vocab, length, width, depth, heads, batch = (
            (50304, 1024, 768, 12, 12, 32) if full else (256, 64, 64, 2, 4, 2)
        )
        model = gpt(vocab, length, width, depth, heads, qk_norm="layernorm", tie=True).to(device)
        x = torch.randint(vocab, (batch, length), device=device)
        y = torch.randint(vocab, (batch, length), device=device)
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
        example = x[:1, :16]  # fx cannot trace the length check: detection runs this short forward pass
        what = f"GPT {depth}×{width}, {heads} heads, batch {batch}×{length} tokens, bf16 autocast, AdamW"
    else:
        raise ValueError(f"unknown case {name!r}: choose from {', '.join(CASES)}")
    probe = SphericalMonitor(model, opt, example_batch=example, keep_history=False)
    names = [u.name for u in probe.units]
    tensors = [t for u in probe.units for t in u.tensors]
    probe.close()
    params = sum(p.numel() for p in model.parameters())
    what += f"; {params / 1e6:.1f}M parameters, {len(tensors)} monitored tensors in {len(names)} units"
    return Case(name, what, device, model, opt, _training_step(model, opt, x, y, device), names, tensors)


def _monitor(case: Case, every: int) -> SphericalMonitor:
    """A monitor of the case's weights that never flushes by itself during a check (flush_every large)."""
    return SphericalMonitor(case.model, case.optimizer, case.names, every=every, flush_every=10_000)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- step time


def _timed(case: Case, steps: int, finish: Callable[[], None]) -> float:
    _sync(case.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        case.step()
    finish()
    _sync(case.device)
    return (time.perf_counter() - t0) / steps


def time_variants(case: Case, steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each variant, one entry a round; the order of the variants rotates each round."""
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for variant in VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]:
            attached: Any = None
            finish: Callable[[], None] = lambda: None  # noqa: E731
            if variant in ("smdyn", "every10"):
                attached = SphericalMonitor(
                    case.model,
                    case.optimizer,
                    case.names,
                    every=1 if variant == "smdyn" else 10,
                    flush_every=100,
                    keep_history=False,
                )
                finish = attached.flush
            elif variant == "naive":
                attached = NaiveMonitor(case.tensors, case.optimizer)
            times[variant].append(_timed(case, steps, finish))
            if attached is not None:
                attached.close()
    return times


# ---------------------------------------------------------------------------------------------- host syncs


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while active, by name (``aten.item``, ``aten.mul``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _host_reads_of_step(case: Case) -> int:
    with OpCounter() as counter:
        case.step()
    return sum(counter.ops[name] for name in HOST_READS)


def host_reads(case: Case, steps: int) -> dict[str, list[int]]:
    """Host reads per step: ``bare`` steps, then ``recorded`` steps of a freshly attached monitor (its first
    recorded step included; none of them a flush)."""
    bare = [_host_reads_of_step(case) for _ in range(steps)]
    mon = _monitor(case, every=1)
    try:
        recorded = [_host_reads_of_step(case) for _ in range(steps)]
    finally:
        mon.close()
    return {"bare": bare, "recorded": recorded}


def added_reads(reads: dict[str, list[int]]) -> list[int]:
    """Host reads the monitor added on each recorded step, over the most a bare step made."""
    return [r - max(reads["bare"]) for r in reads["recorded"]]


@contextlib.contextmanager
def _sync_debug(mode: str) -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


_PACKAGE = str(Path(smdyn.__file__).resolve().parent)


def _where(exc: BaseException) -> str:
    """The innermost frame of smdyn's code in the traceback, or the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    ours = [f for f in frames if str(Path(f.filename).resolve()).startswith(_PACKAGE)]
    f = (ours or frames)[-1]
    return f"{f.filename}:{f.lineno} in {f.name}"


def run_checked(steps: Callable[[], None], count: int) -> dict[str, Any]:
    """Run ``count`` steps and sort what went wrong: warnings of a sync (mode "warn"), an error let out of a
    step (mode "error") and errors the monitor caught and reported as a warning (it never raises)."""
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for _ in range(count):
                steps()
        except RuntimeError as exc:
            error = f"{str(exc).splitlines()[0]} (at {_where(exc)})"
    messages = [str(w.message) for w in caught]
    by_monitor = [m for m in messages if m.startswith(_CAUGHT_BY_MONITOR) and _SYNC_WORDS in m]
    warned = [m for m in messages if not m.startswith(_CAUGHT_BY_MONITOR) and _SYNC_WORDS in m]
    first = error or (by_monitor[0] + " (caught by the monitor)" if by_monitor else None)
    return {"warned": len(warned), "by_monitor": len(by_monitor), "error": error, "first": first}


def cuda_syncs(case: Case, steps: int) -> dict[str, Any]:
    """Sync-debug checks of a freshly attached monitor (none of its steps a flush).

    Mode "warn" over whole steps counts the syncs of ``steps`` bare steps, of the monitor's first recorded
    step and of ``steps`` recorded steps after it. Mode "error" then holds during ``optimizer.step()`` of
    ``steps`` more recorded steps: the monitor's hooks run there and only there, so a sync that the model's
    own forward or backward makes (some kernels read a size back) does not hide the monitor's.
    """

    def strict_step() -> None:
        case.step(lambda: _sync_debug("error"))

    with _sync_debug("warn"):
        bare = run_checked(case.step, steps)
    mon = _monitor(case, every=1)
    try:
        with _sync_debug("warn"):
            first = run_checked(case.step, 1)
            later = run_checked(case.step, steps)
        strict = run_checked(strict_step, steps)
        recorded = len(set(mon.history()["step"].tolist()))  # history() flushes: after the checked steps
    finally:
        mon.close()
    return {
        "bare": bare,
        "first": first,
        "later": later,
        "strict": strict,
        "recorded": recorded,
        "steps": steps,
    }


# ---------------------------------------------------------------------------------------------- ops per step

_LAUNCH = "LaunchKernel"  # cudaLaunchKernel, cudaLaunchKernelExC, cuLaunchKernel, cuLaunchKernelEx
_SYNC_CALLS = ("cudaStreamSynchronize", "cudaEventSynchronize")  # the host waits (not our final sync)


def _outermost_aten(events: Any) -> int:
    n = 0
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        n += parent is None
    return n


def _profiled(case: Case, steps: int) -> dict[str, float]:
    """Counts per step over ``steps`` profiled steps (the final device synchronisation excluded)."""
    cuda = case.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            case.step()
        _sync(case.device)
    events = prof.events()
    counts = {"aten ops": _outermost_aten(events)}
    if cuda:
        on_device = [  # kernels, copies and sets; not the spans of record_function annotations
            e
            for e in events
            if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
        ]
        copies = sum(e.name.startswith(("Memcpy", "Memset")) for e in on_device)
        counts["kernels"] = len(on_device) - copies
        counts["copies"] = copies
        counts["launch calls"] = sum(_LAUNCH in e.name for e in events)
        counts["host syncs"] = sum(e.name in _SYNC_CALLS for e in events)
    return {k: v / steps for k, v in counts.items()}


def ops_per_step(case: Case, steps: int) -> dict[str, dict[str, float]]:
    """Profiled counts per step: bare, recorded (monitor every step, after its first step) and unrecorded
    (monitor every 10th step, on the steps after its first recording)."""
    steps = min(steps, 9)  # unrecorded steps of an every-10 monitor: 1..9
    bare = _profiled(case, steps)
    mon = _monitor(case, every=1)
    try:
        case.step()
        recorded = _profiled(case, steps)
    finally:
        mon.close()
    mon = _monitor(case, every=10)
    try:
        case.step()  # step 0 is recorded
        unrecorded = _profiled(case, steps)
    finally:
        mon.close()
    return {"bare": bare, "recorded": recorded, "unrecorded": unrecorded}


# ---------------------------------------------------------------------------------------------- report


def _print_times(times: dict[str, list[float]], steps: int, rounds: int) -> None:
    print(f"step time (median of {rounds} rounds × {steps} steps; ratio to bare in the same round)")
    bare = times["bare"]
    for variant, ts in times.items():
        ratios = [t / b for t, b in zip(ts, bare, strict=True)]
        spread = f" [{min(ratios):.3f}–{max(ratios):.3f}]" if variant != "bare" else ""
        print(
            f"  {variant:<8} {statistics.median(ts) * 1e3:10.2f} ms/step  "
            f"ratio {statistics.median(ratios):.3f}{spread}"
        )


def _print_syncs(reads: dict[str, list[int]], syncs: dict[str, Any] | None) -> None:
    print("host syncs")
    if syncs is None:
        print(
            "  sync debug mode is CUDA-only (torch.cuda.set_sync_debug_mode): host reads are counted instead"
        )
    else:
        n, strict = syncs["steps"], syncs["strict"]
        verdict = "0 syncs" if strict["first"] is None else f"first error: {strict['first']}"
        print(f"  sync debug mode 'error' around optimizer.step(), {n} recorded non-flush steps: {verdict}")
        print(
            f"  sync debug mode 'warn', whole steps: bare {syncs['bare']['warned'] / n:g} syncs/step, "
            f"monitor's first recorded step {syncs['first']['warned']}, "
            f"later recorded steps {syncs['later']['warned'] / n:g}/step"
        )
        print(f"  steps the monitor recorded: {syncs['recorded']} of {2 * n + 1}")
    print(
        f"  host reads per step (dispatch count): bare {reads['bare']}, recorded {reads['recorded']}, "
        f"added by the monitor {added_reads(reads)}"
    )


def _print_ops(ops: dict[str, dict[str, float]], tensors: int) -> None:
    print(f"ops per step (torch.profiler; {tensors} monitored tensors)")
    bare = ops["bare"]
    for kind in bare:
        rec = ops["recorded"][kind] - bare[kind]
        unrec = ops["unrecorded"][kind] - bare[kind]
        print(
            f"  {kind:<13} bare {bare[kind]:8.1f}  recorded {rec:+8.1f} ({rec / tensors:+.2f} per tensor)  "
            f"unrecorded {unrec:+.1f}"
        )


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of one case, printed as it is made and returned."""
    device = torch.device(args.device)
    case = build_case(name, args.size, device)
    print(f"\n== {name} ({args.size}): {case.description}")
    for _ in range(3):  # warm-up: optimizer state, allocator, cudnn autotuning
        case.step()
    # Sync checks first: the process's first recorded step (one-time set-up) is among the checked ones.
    syncs = cuda_syncs(case, args.check_steps) if device.type == "cuda" else None
    reads = host_reads(case, args.check_steps)
    _print_syncs(reads, syncs)
    times = time_variants(case, args.steps, args.rounds)
    _print_times(times, args.steps, args.rounds)
    ops = ops_per_step(case, args.check_steps)
    _print_ops(ops, len(case.tensors))
    return {"times": times, "host_reads": reads, "syncs": syncs, "ops": ops, "tensors": len(case.tensors)}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--case", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--steps", type=_positive, default=20, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=_positive, default=5)
    parser.add_argument("--check-steps", type=_positive, default=3, help="steps per sync and profiler check")
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here")
        torch.backends.cudnn.benchmark = True
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    else:
        print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads")
    return {name: run_case(name, args) for name in args.case}


if __name__ == "__main__":
    main()
