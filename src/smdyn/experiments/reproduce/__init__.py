"""``smdyn reproduce NAME [--quick]``: run one of the paper's experiments and check its claims by numbers.

Wan et al., "Spherical Motion Dynamics" (NeurIPS 2021), Sec 4, at CPU scale. Each experiment is a list of
shipped configs (``smdyn/experiments/configs``) run one after another (never in parallel: the runs use every
core they are given), each into ``<out>/<config>[-seed<N>]/``, followed by the comparison report
(`smdyn.experiments.report.write_report`) and ``claims.json``: for every claim of the paper the experiment
addresses, the measured figures, a verdict — ``reproduced``, ``partly`` or ``not reproduced`` — and the
reason, computed from the numbers with the experiment's thresholds. `write_reproduction_md` gathers the
``claims.json`` files of finished experiments into ``REPRODUCTION.md``: no number there is typed in.

Experiments (``--quick`` scales the steps with `scale_steps`, by the factor given per config, so that an
experiment takes at most ~3 min on two cores; the theorems' time scales do not shrink with it, so several
claims cannot show at that size — the quick variants are smoke tests):

- ``fig3``: fixed learning rate, SGD and SGDM (Thm 1–3; SGDM reaches equilibrium sooner, Eqs 8/12).
- ``fig4``: a grid of (η, λ) with equal and unequal ηλ, with and without momentum (Sec 4.1).
- ``fig5``: a multi-stage learning rate with and without the k^(−¼) rescaling (Cor 3.1, Sec 4.2).
- ``fig6``: "pseudo overfitting": SGDM, SGDM + rescaling and Adam on a finite training split, 3 seeds
  (Sec 4.3; ``--quick`` runs seed 0 only).
- ``collapse``: a network that memorises its training set, where the theorems' assumption fails: the unit
  gradient collapses, Δ falls far below Δ* and the monitor says so in its ``reason_code`` column.
- ``all``: every experiment above, each into ``<out>/<experiment>/``, then ``<out>/REPRODUCTION.md``.

A run directory whose ``summary.json`` says the run finished is re-used, one that was interrupted is
resumed from its checkpoint, so ``smdyn reproduce all --out DIR`` continues where it stopped. A run
directory that holds a different configuration is never overwritten.

One module per experiment (`fig3`, `fig4`, `fig5`, `fig6`, `collapse`) declares its configs, its
``--quick`` factors, its thresholds (a frozen dataclass, written whole into ``claims.json``) and the
evaluation that turns its runs into typed claims (`claims.Claim`, with a `claims.Verdict`); `measures`
holds the measurements they share, `runner` the order of the runs and their re-use, `markdown` the
``REPRODUCTION.md`` renderer and `command` the command line.

Measurements (all over scale-invariant layers with a theoretical value, i.e. a finite Δ* > 0):

- Equilibrium (Thm 1–3): over the last monitor window of the last learning-rate stage, per layer
  RMS Δ/Δ* = √(mean (Δ_t/Δ*)²) (Δ* = √(2λη/(1+α)) is the equilibrium value of √E[Δ²], Thm 3), mean Δ/Δ*
  and ‖w‖/w* = √(mean ‖w_t‖² / mean w*_t²) (w* the monitor's exact fixed point of Thm 1 / Thm 2); the
  median over layers of |RMS Δ/Δ* − 1| and |‖w‖/w* − 1|.
- Time to equilibrium: the first step at which the monitor flags a layer ``in_equilibrium``; median over
  layers (a layer never flagged counts as never).
- Lag after a drop by k (Cor 3.1): the first step after the drop at which the RMS of Δ/Δ*_new over a
  centred window of ``rolling_records`` records reaches 1 − ``reached_tol``, median over layers, against
  ⌈ln(k)(1−α)/(2λη_new)⌉ (`smdyn.theory.steps_to_new_equilibrium`).
- Stage deviation (Sec 4.2): the mean over a stage of |RMS Δ/Δ* − 1| (RMS over trailing windows of
  ``rolling_records`` records inside the stage), median over layers.
- Test-accuracy dip (Sec 4.3): the largest drawdown (a peak minus a later value) of the seed-mean test
  accuracy inside a learning-rate stage, after a running median over 3 evaluations (one outlying
  evaluation is not a dip); Δ rise: RMS Δ over the last 10% of the second stage divided by RMS Δ over its
  first 5%, median over layers, mean over seeds.
- Training figures: train loss and accuracy, mean of the ``train.csv`` rows in the last 10% of the run;
  test accuracy and loss, mean of the evaluations in the last 25% of the run.
"""

from smdyn.experiments.reproduce.claims import Claim, Experiment, Verdict
from smdyn.experiments.reproduce.command import add_reproduce_arguments, reproduce_main
from smdyn.experiments.reproduce.markdown import reproduction_markdown, write_reproduction_md
from smdyn.experiments.reproduce.runner import EXPERIMENTS, reproduce

__all__ = [
    "EXPERIMENTS",
    "Claim",
    "Experiment",
    "Verdict",
    "add_reproduce_arguments",
    "reproduce",
    "reproduce_main",
    "reproduction_markdown",
    "write_reproduction_md",
]
