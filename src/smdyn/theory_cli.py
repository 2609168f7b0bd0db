"""``smdyn theory --optimizer ...``: each update rule's equilibrium, read from the rule registry.

The values come from the same :class:`smdyn.rules.Rule` the monitor and the Rescaler use: a real optimizer
of the requested kind is built on one dummy weight of ``--shape`` and asked for its rule, so the command
cannot disagree with what the monitor prints next to a run.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

import torch

from smdyn import rules, theory
from smdyn._plan_setup import DEFAULTS, default_beta2

#: optimizer name → (builder of the torch optimizer on a list of params, label, source, assumptions)
_KINDS: dict[str, tuple[Callable[[list[torch.Tensor], argparse.Namespace], Any], str, str, str]] = {
    "sgd": (
        lambda p, a: torch.optim.SGD(p, lr=a.lr, weight_decay=a.wd, momentum=a.momentum),
        "torch.optim.SGD (heavy ball)",
        "Wan et al. 2021 (Spherical Motion Dynamics), Thms 1-3",
        "coupled decay, gradients orthogonal to w, a unit gradient that does not vanish, λη ≪ 1 − α",
    ),
    "nesterov": (
        lambda p, a: torch.optim.SGD(p, lr=a.lr, weight_decay=a.wd, momentum=a.momentum, nesterov=True),
        "torch.optim.SGD (Nesterov)",
        "derived from the exact update (docs/design.md §6), checked against torch to 0.1%",
        "as SGD; successive gradients uncorrelated",
    ),
    "adamw": (
        lambda p, a: torch.optim.AdamW(p, lr=a.lr, weight_decay=a.wd, betas=(a.momentum, a.beta2)),
        "torch.optim.AdamW",
        "Kosson et al., ICML 2024 (rotational equilibrium)",
        "decoupled decay, gradients that are noise between steps, β₂ close enough to 1 that v settles",
    ),
    "radam": (
        lambda p, a: torch.optim.RAdam(
            p, lr=a.lr, weight_decay=a.wd, betas=(a.momentum, a.beta2), decoupled_weight_decay=True
        ),
        "torch.optim.RAdam (decoupled decay)",
        "Kosson et al., ICML 2024 (AdamW's law once the rectification has settled)",
        "as AdamW, and β₂^t ≈ 0",
    ),
    "muon": (
        lambda p, a: torch.optim.Muon(p, lr=a.lr, weight_decay=a.wd, momentum=a.momentum),
        "torch.optim.Muon (Nesterov)",
        "rotational equilibrium (Kosson et al. 2024; Wen et al. 2026), Newton-Schulz decorrelation by a "
        "fixed-seed Monte Carlo (docs/design.md §6)",
        "2-D weight, gradients that are noise between steps; Δ* depends on the aspect ratio",
    ),
    "lion": (
        None,  # type: ignore[dict-item]  # not in torch: the registry's lion_rule reads a param group
        "Lion (smdyn.rules.lion_rule)",
        "rotational equilibrium with the arcsine law of sign(·) (docs/design.md §6)",
        "decoupled decay, Gaussian noise gradients",
    ),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--optimizer`` options of ``smdyn theory`` (the SGD-only options stay as they were)."""
    p.add_argument(
        "--optimizer",
        choices=sorted(_KINDS),
        default=None,
        help="print this update rule's equilibrium from the rule registry (default: the paper's SGD summary)",
    )
    p.add_argument(
        "--beta2", type=float, default=None, help="β₂ of AdamW/RAdam (default 0.999) and Lion (default 0.99)"
    )
    p.add_argument("--shape", type=int, nargs="+", default=[256, 256], help="the weight's shape (for w*)")


def _rule(args: argparse.Namespace) -> rules.Rule:
    build = _KINDS[args.optimizer][0]
    if args.optimizer == "lion":
        group = {"lr": args.lr, "weight_decay": args.wd, "betas": (args.momentum, args.beta2)}
        return rules.lion_rule(None, group)  # type: ignore[arg-type]
    weight = torch.nn.Parameter(torch.zeros(args.shape))
    opt = build([weight], args)
    return rules.rule_for(opt, opt.param_groups[0])


def _check(args: argparse.Namespace) -> None:
    if not 0 <= args.momentum < 1:
        raise ValueError(f"--momentum (β₁ for Adam-type rules) must be in [0, 1), got {args.momentum:g}")
    if not 0 <= args.beta2 < 1:
        raise ValueError(f"--beta2 must be in [0, 1), got {args.beta2:g}")
    if args.wd <= 0:
        raise ValueError(f"--wd must be > 0 for an equilibrium, got {args.wd:g}")
    if any(d < 1 for d in args.shape):
        raise ValueError(f"--shape must be positive sizes, got {args.shape}")
    if args.optimizer == "muon" and len(args.shape) != 2:
        raise ValueError(f"--shape: Muon trains 2-D weights only, got {len(args.shape)} dimensions")


#: The family whose defaults (``smdyn._plan_setup.DEFAULTS``) each ``--optimizer`` takes.
_FAMILY = {
    "sgd": "sgd",
    "nesterov": "sgd",
    "adamw": "adamw",
    "radam": "adamw",
    "muon": "muon",
    "lion": "lion",
}


def run(args: argparse.Namespace) -> int:
    """Print the rule's Δ*, w*, relaxation time and norm exponent; bad input exits 2 naming the argument."""
    family = _FAMILY[args.optimizer]
    args.momentum = DEFAULTS[family][0] if args.momentum is None else args.momentum
    args.beta2 = default_beta2(family) if args.beta2 is None else args.beta2
    if args.optimizer == "nesterov" and args.momentum == 0:
        print("smdyn theory: --momentum must be > 0 for Nesterov", file=sys.stderr)
        return 2
    try:
        _check(args)
        rule = _rule(args)
    except (ValueError, RuntimeError) as exc:
        print(f"smdyn theory: {exc}", file=sys.stderr)
        return 2
    _, label, source, assumptions = _KINDS[args.optimizer]
    numel = math.prod(args.shape)
    shape = "×".join(str(d) for d in args.shape)
    print(f"{label}: lr η = {args.lr:g}, weight decay λ = {args.wd:g}, momentum/β₁ = {args.momentum:g}")
    if not rule.theory:
        print(f"  no equilibrium theory: {rule.note}")
        return 0
    lr, wd, mom = args.lr, args.wd, args.momentum
    rows: list[tuple[str, float, str]] = [
        ("equilibrium angular update Δ*", float(rule.angular_update(lr, wd, mom)), "rad/step"),
    ]
    if rule.family == "sgd":
        if args.L is not None:
            w_star = float(rule.weight_norm(args.L, lr, wd, mom))
            rows.append(("equilibrium weight norm w*", w_star, "(from --L)"))
        else:
            rows.append(("equilibrium weight norm w*", math.nan, "needs --L = E‖g̃‖²"))
        grad_ratio = math.sqrt(2 * wd / (lr * theory.sgd_filter_sums(mom, rule.dampening, rule.nesterov)[0]))
        rows.append(("steady-state ‖g‖/‖w‖", grad_ratio, ""))
    else:
        rows.append(("equilibrium weight norm w*", float(rule.equilibrium_norm(lr, wd, mom, numel)), shape))
    rows.append(("relaxation time of the norm", float(rule.relaxation_steps(lr, wd, mom)), "steps"))
    rows.append(("norm exponent p (w* ∝ η^p at fixed λ)", rule.norm_exponent, ""))
    for name, value, unit in rows:
        print(f"  {name:<40} {value:.6g} {unit}".rstrip())
    print(f"  source: {source}")
    print(f"  assumes: {assumptions}")
    return 0
