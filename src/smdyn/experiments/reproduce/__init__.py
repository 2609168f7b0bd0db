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
- ``fig6``: "pseudo overfitting": SGDM (5 seeds), SGDM + rescaling and Adam (3 seeds) on a finite training
  split (Sec 4.3; ``--quick`` runs seed 0 only).
- ``collapse``: a network that memorises its training set, where the theorems' assumption fails: the unit
  gradient collapses, Δ falls far below Δ* and the monitor says so in its ``reason_code`` column.
- ``transformer``: rotational equilibrium beyond the paper: AdamW and Muon in a small character-level GPT on
  the standard library's source (Kosson et al. 2024; docs/design.md §6).
- ``schedules``: warm-up + cosine in a small GPT: the late rise of ‖g‖/‖w‖, what CorrectedWeightDecay, the
  continuous Rescaler and RotationController do to it and to the held-out loss (3 seeds), and the early
  rotation excess without warm-up against `smdyn.plan` (Defazio et al. 2025; Kosson et al. 2024).
- ``all``: every experiment above, each into ``<out>/<experiment>/``, then ``<out>/REPRODUCTION.md``.

A run directory whose ``summary.json`` says the run finished is re-used, one that was interrupted is
resumed from its checkpoint, so ``smdyn reproduce all --out DIR`` continues where it stopped. A run
directory that holds a different configuration is never overwritten.

One module per experiment (`fig3`, `fig4`, `fig5`, `fig6`, `collapse`, `transformer`, `schedules`) declares
its configs, its ``--quick`` factors, its thresholds (a frozen dataclass, written whole into
``claims.json``) and the evaluation that turns its runs into typed claims (`claims.Claim`, with a
`claims.Verdict`); `measures` holds the measurements they share, `runner` the order of the runs and their
re-use, `markdown` the ``REPRODUCTION.md`` renderer and `command` the command line.

Every measurement behind a claim (equilibrium ratios, time to equilibrium, the lag after a drop, stage
deviation, the test-accuracy dip) is defined once, in `measures`' docstring.
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
