"""Runs the experiments of `smdyn reproduce`: plans the runs, trains them one after another (never in
parallel: each uses every core it is given), re-uses finished runs, resumes interrupted ones, refuses a
folder that holds another configuration, and writes each experiment's report and ``claims.json``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from smdyn.experiments import rundir
from smdyn.experiments._io import atomic_write_json
from smdyn.experiments.config import Config, load_config, scale_steps
from smdyn.experiments.reproduce import collapse, fig3, fig4, fig5, fig6, schedules, transformer
from smdyn.experiments.reproduce.claims import Claim, Experiment, Runs, Verdict, finite

__all__ = ["EXPERIMENTS", "EXPERIMENTS_BY_NAME", "command", "reproduce", "run_experiment"]

#: The experiments, in the order ``all`` runs them.
EXPERIMENTS_BY_NAME: dict[str, Experiment] = {
    e.name: e
    for e in (
        fig3.EXPERIMENT,
        fig4.EXPERIMENT,
        fig5.EXPERIMENT,
        fig6.EXPERIMENT,
        collapse.EXPERIMENT,
        transformer.EXPERIMENT,
        schedules.EXPERIMENT,
    )
}
#: Names accepted by `reproduce`: the experiments, in the order ``all`` runs them, then ``"all"``.
EXPERIMENTS: tuple[str, ...] = (*EXPERIMENTS_BY_NAME, "all")


@dataclass(frozen=True)
class _Planned:
    config: str
    seed: int | None
    cfg: Config
    dir_name: str
    full_steps: int


def _plan(exp: Experiment, quick: bool, threads: int | None) -> list[_Planned]:
    out = []
    for name in exp.configs:
        seeds = exp.seeds_of(name, quick)
        base = load_config(name)
        cfg = scale_steps(base, exp.quick_factor[name]) if quick else base
        if threads is not None:
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, threads=threads))
        if not seeds:
            out.append(_Planned(name, None, cfg, name, base.run.steps))
            continue
        for seed in seeds:
            run = dataclasses.replace(cfg.run, seed=seed, name=f"{name}-seed{seed}")
            out.append(
                _Planned(name, seed, dataclasses.replace(cfg, run=run), f"{name}-seed{seed}", base.run.steps)
            )
    return out


def _comparable(cfg: Config) -> dict[str, Any]:
    """The config without the keys that change neither batches nor updates (threads, device)."""
    d = cfg.to_dict()
    d["run"] = {k: v for k, v in d["run"].items() if k not in ("threads", "device")}
    return d


def _differences(a: Config, b: Config) -> list[str]:
    da, db = _comparable(a), _comparable(b)
    return [
        f"{sec}.{k}"
        for sec in da
        for k in sorted(set(da[sec]) | set(db.get(sec, {})))
        if da[sec].get(k) != db.get(sec, {}).get(k)
    ]


def _prepare(run_dir: Path, cfg: Config) -> str:
    """What to do with ``run_dir``: ``"new"``, ``"resume"`` (interrupted) or ``"done"`` (finished).

    Raises:
        FileExistsError: the folder holds something else than this run, which is never overwritten.
    """
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    cfg_path = run_dir / rundir.CONFIG
    if not cfg_path.is_file():
        raise FileExistsError(f"{run_dir} exists and holds no config.toml; choose another --out")
    saved = load_config(cfg_path)
    diff = _differences(saved, cfg)
    if diff:
        raise FileExistsError(
            f"{run_dir} holds a run of another configuration (differs in {', '.join(diff)}); "
            "choose another --out (quick and full runs need different folders)"
        )
    summary_path = run_dir / rundir.SUMMARY
    status = None
    if summary_path.is_file():
        try:
            status = json.loads(summary_path.read_text(encoding="utf-8")).get("status")
        except ValueError:
            status = None
    if status in ("completed", "diverged"):
        return "done"
    if (run_dir / rundir.CHECKPOINT).is_file():
        return "resume"
    # Stopped before its first checkpoint (killed): nothing to resume from, and this very config.
    shutil.rmtree(run_dir)
    return "new"


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def command(name: str, quick: bool) -> str:
    """The command line that runs an experiment."""
    return f"smdyn reproduce {name}" + (" --quick" if quick else "")


def _train_all(
    exp: Experiment, plan: list[_Planned], out: Path, quiet: bool
) -> tuple[dict[str, list[Path]], list]:
    """Trains (or re-uses, or resumes) every planned run, in order; returns the run folders per config and
    one record per run for claims.json."""
    from smdyn.experiments.train import train

    dirs: dict[str, list[Path]] = {}
    info = []
    for i, p in enumerate(plan, 1):
        run_dir = out / p.dir_name
        state = _prepare(run_dir, p.cfg)
        label = f"{exp.name} [{i}/{len(plan)}] {p.dir_name} ({p.cfg.run.steps} steps)"
        if state == "done":
            _say(quiet, f"{label}: finished earlier, re-used")
        else:
            _say(quiet, f"{label}: {'resuming' if state == 'resume' else 'training'} in {run_dir}")
            train(p.cfg, run_dir, resume=state == "resume", quiet=quiet)
        summary = json.loads((run_dir / rundir.SUMMARY).read_text(encoding="utf-8"))
        dirs.setdefault(p.config, []).append(run_dir)
        info.append(
            {
                "dir": p.dir_name,
                "config": p.config,
                "seed": p.cfg.run.seed,
                "steps": summary.get("steps"),
                "full_steps": p.full_steps,
                "status": summary.get("status"),
                "wall_time_s": summary.get("wall_time_s"),
                "steps_per_s": summary.get("steps_per_s"),
                "threads": summary.get("threads"),
                "reused": state == "done",
            }
        )
    return dirs, info


def _full_estimate(exp: Experiment, info: list[dict[str, Any]]) -> float:
    """Seconds the full experiment would train, from the steps/s of the runs just made."""
    estimate = 0.0
    for name in exp.configs:
        n_seeds = max(1, len(exp.seeds_of(name, quick=False)))
        rates = [
            r["steps_per_s"] for r in info if r["config"] == name and finite(r["steps_per_s"] or math.nan)
        ]
        full = next(r["full_steps"] for r in info if r["config"] == name)
        estimate += full * n_seeds / float(np.mean(rates)) if rates else math.nan
    return estimate


def _evaluate(exp: Experiment, loaded: Runs) -> list[Claim]:
    try:
        return exp.evaluate(loaded)
    except rundir.NoDataError as exc:  # a run without records (diverged at once): say so
        return [Claim("no_data", exp.title, "", list(loaded), "", Verdict.NOT_REPRODUCED, str(exc))]


def _own_figures(
    exp: Experiment, loaded: Runs, claims: list[Claim], folder: Path, quiet: bool
) -> list[tuple[str, str, Path]]:
    """The experiment's own figures for its report (none when it declares none or has nothing to draw)."""
    if exp.figures is None:
        return []
    try:
        return exp.figures(loaded, claims, folder)
    except rundir.NoDataError as exc:
        _say(quiet, f"  {exp.name}: its own figures were not drawn ({exc})")
        return []


def run_experiment(
    exp: Experiment, quick: bool, out: Path, threads: int | None, report: bool, quiet: bool
) -> Path:
    """Runs one experiment into ``out``: its runs, the comparison report and ``claims.json``."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dirs, info = _train_all(exp, _plan(exp, quick, threads), out, quiet)
    loaded = {name: [rundir.load_run(d) for d in ds] for name, ds in dirs.items()}
    claims = _evaluate(exp, loaded)
    report_path = None
    if report:
        from smdyn.experiments.report import write_report

        report_path = write_report(
            [d for ds in dirs.values() for d in ds],
            out,
            title=f"smdyn reproduce: {exp.title}",
            extra_figures=_own_figures(exp, loaded, claims, out / "figures", quiet),
        )
    doc = {
        "experiment": exp.name,
        "title": exp.title,
        "quick": quick,
        "command": command(exp.name, quick),
        "created": datetime.now().isoformat(timespec="seconds"),
        "wall_time_s": time.perf_counter() - t0,
        "train_time_s": float(sum(r["wall_time_s"] or 0.0 for r in info)),
        "full_estimate_s": _full_estimate(exp, info),
        "full_runs": exp.full_runs(),
        "runs": info,
        "report": report_path.name if report_path else None,
        "thresholds": exp.threshold_values(),
        "claims": [c.to_dict() for c in claims],
    }
    path = atomic_write_json(out / "claims.json", doc, inf_as_text=True)
    for c in claims:
        _say(quiet, f"  {c.id}: {c.verdict.value} — {c.reason}")
    _say(quiet, f"wrote {path}" + (f" and {report_path}" if report_path else ""))
    return out


def reproduce(
    name: str,
    *,
    quick: bool = False,
    out: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    report: bool = True,
    quiet: bool = False,
) -> Path:
    """Runs one of the paper's experiments (or ``"all"``) and writes its report and ``claims.json``.

    Args:
        name: one of `EXPERIMENTS`.
        quick: the smoke-test variant: steps scaled by the experiment's factors, fig6 with one seed.
        out: the output folder; default a new ``runs/reproduce-<name>[-quick]-<time>/``. Runs go to
            ``<out>/<config>[-seed<N>]/`` (``<out>/<experiment>/...`` for ``all``); finished runs found
            there are re-used and interrupted ones resumed.
        threads: torch CPU threads for every run, replacing the configs' ``run.threads`` (results do not
            depend on it; on a loaded machine 1 is often much faster than 2).
        report: also write the comparison ``report.html`` and its figures.
        quiet: print nothing.

    Returns:
        The output folder.

    Raises:
        ValueError: an unknown ``name`` or a bad ``threads``.
        FileExistsError: a run folder under ``out`` holds a different configuration.
        KeyboardInterrupt: re-raised after the running run saved its checkpoint; run again to resume.
    """
    if not isinstance(name, str) or name not in EXPERIMENTS:
        raise ValueError(f"name must be one of {', '.join(EXPERIMENTS)}, got {name!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
        raise ValueError(f"threads must be a non-negative integer or None, got {threads!r}")
    if out is None:
        out = Path("runs") / f"reproduce-{name}{'-quick' if quick else ''}-{datetime.now():%Y%m%d-%H%M%S}"
    root = Path(out)
    if name != "all":
        return run_experiment(EXPERIMENTS_BY_NAME[name], quick, root, threads, report, quiet)
    for exp in EXPERIMENTS_BY_NAME.values():
        run_experiment(exp, quick, root / exp.name, threads, report, quiet)
    from smdyn.experiments.reproduce.markdown import write_reproduction_md

    md = write_reproduction_md(root, root / "REPRODUCTION.md")
    _say(quiet, f"wrote {md}")
    return root
