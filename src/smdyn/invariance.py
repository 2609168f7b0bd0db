"""Find the scale-invariant parameters of a model, with the evidence for each.

A tensor w is scale-invariant when L(kw) = L(w) for every k > 0 (Definition 1 of Wan et al., "Spherical
Motion Dynamics", NeurIPS 2021); then ⟨w, ∂L/∂w⟩ = 0 (Lemma 1, Eq 3) and SGD with weight decay moves w on a
sphere. Detection reads the *data flow* of the forward pass, never the order in which modules are registered.
The graph comes from torch.fx symbolic tracing (no input needed); when tracing fails and ``example_batch`` is
given, from one recorded forward pass: hooks on leaf modules plus a TorchFunctionMode that sees every
functional op between them, so in ``bn(conv(x) + x)`` the add that mixes ``x`` in is seen. Two sources:

* A Linear / ConvNd / ConvTransposeNd whose every call feeds one consumer only, through positively
  homogeneous ops (f(k·y) = k·f(y), k > 0), into a BatchNorm, InstanceNorm, GroupNorm, LayerNorm or RMSNorm
  module. Such ops: contiguous, clone, Identity; ReLU, LeakyReLU, Dropout (elementwise); view, reshape,
  flatten, (un)squeeze, permute, transpose, max/avg pooling (layout). Each norm divides by a statistic of
  degree 1, so scaling its whole input by k changes nothing (up to eps), whatever axes it reduces over. The
  bias is not scaled with the weight: only a mean subtraction over a set on which it is constant removes it,
  i.e. BatchNorm / InstanceNorm whose channel axis is the layer's output-channel axis with only identity-like
  ops between. Otherwise a layer with a bias is reported jointly with it (``fc.weight+fc.bias``), as the
  paper counts the bias in w. The channel axis is not followed through layout ops, and BatchNorm1d needs the
  input rank (known only with ``example_batch``) to place it.
* Weight normalisation: the direction v of ``parametrizations.weight_norm`` (``original1``) or of the legacy
  ``weight_norm`` (``weight_v``): w = g·v/‖v‖ does not depend on ‖v‖.

Excluded, to stay conservative: frozen parameters, parameters shared by several modules or used by the forward
outside their own module, layers whose weight is itself parametrized, and functional norms (modules only).

With ``example_batch`` a numerical probe, the ground truth, confirms each candidate: Definition 1 at
k ∈ {0.5, 3} and Lemma 1 from one gradient, with every norm's eps divided by 1e6 meanwhile (eps, a guard
against division by zero, is no part of Definition 1 but would move L(0.5w) by 2% at a variance σ² = 1e-4).
A candidate it refutes is dropped with a ``warnings.warn`` saying why. Parameters, buffers, gradients and
RNG state are left bit-identical.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules import pooling
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.overrides import TorchFunctionMode

__all__ = ["InvariantParam", "find_scale_invariant"]

_SCALES = (0.5, 3.0)  # k of the Definition 1 probe: one shrink, one growth
_SEED = 0
_NORMS: tuple[tuple[type[nn.Module], str], ...] = (
    (_BatchNorm, "batchnorm"),
    (_InstanceNorm, "instancenorm"),
    (nn.GroupNorm, "groupnorm"),
    (nn.LayerNorm, "layernorm"),
    (nn.RMSNorm, "rmsnorm"),
)
_TCONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *_TCONVS)
# How an op between a layer and its norm acts on the layer's output y (each is positively homogeneous):
# identity keeps values and axes; elementwise keeps axes, f(k·y) = k·f(y) per element; layout keeps neither.
_IDENTITY, _ELEMENTWISE, _LAYOUT = "identity", "elementwise", "layout"
_OP_STEPS = {
    **dict.fromkeys(("contiguous", "clone"), _IDENTITY),
    **dict.fromkeys(("relu", "leaky_relu", "dropout", "dropout1d", "dropout2d", "dropout3d"), _ELEMENTWISE),
    **dict.fromkeys(("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "t"), _LAYOUT),
    **dict.fromkeys(("permute", "transpose"), _LAYOUT),
    **{f"{p}_pool{d}d": _LAYOUT for p in ("max", "avg", "adaptive_max", "adaptive_avg") for d in (1, 2, 3)},
}
_MODULE_STEPS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    ((nn.Identity,), _IDENTITY),
    ((nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d), _ELEMENTWISE),
    ((nn.Flatten, nn.Unflatten, pooling._MaxPoolNd, pooling._AvgPoolNd), _LAYOUT),
    ((pooling._AdaptiveAvgPoolNd, pooling._AdaptiveMaxPoolNd), _LAYOUT),
)
# Reading these does not use a tensor's values, so they do not count as consumers.
_SHAPE_QUERIES = frozenset(("size", "shape", "dim", "ndim", "numel", "stride", "__len__", "dtype", "device"))


@dataclass(frozen=True)
class InvariantParam:
    """One scale-invariant vector: a tensor, or a weight and its bias that are invariant only jointly.

    Attributes:
        name: ``"conv1.weight"``, or ``"fc.weight+fc.bias"`` for a jointly invariant pair.
        params: the parameter names, as ``model.named_parameters()`` gives them.
        norm: qualified name of the normalising module(s) (comma-separated when a layer is called several
            times), or of the weight-normalised module.
        kind: ``batchnorm``, ``groupnorm``, ``layernorm``, ``instancenorm``, ``rmsnorm`` or ``weight_norm``.
        per_channel: every dim-0 slice (of each tensor in ``params``) is scale-invariant on its own.
        evidence: human-readable reasons (data flow, probe values, Lemma 1 cosine).
    """

    name: str
    params: tuple[str, ...]
    norm: str
    kind: str
    per_channel: bool
    evidence: tuple[str, ...]


@dataclass(eq=False)
class _Node:
    """One step of the forward pass: a module call, a functional op, an input or the output."""

    name: str
    module: nn.Module | None = None
    inputs: list[_Node] = field(default_factory=list)
    users: list[_Node] = field(default_factory=list)
    in_ndim: int | None = None  # rank of the first tensor input, when known

    def link(self, inputs: list[_Node]) -> _Node:
        self.inputs = inputs
        for i in inputs:
            i.users.append(self)
        return self


@dataclass
class _Graph:
    how: str
    calls: dict[str, list[_Node]] = field(default_factory=lambda: defaultdict(list))
    loose: set[str] = field(default_factory=set)  # parameters the forward uses outside their module's call


@dataclass(frozen=True)
class _Edge:
    path: tuple[str, ...]
    norm: str
    kind: str
    norm_type: str
    aligned: bool  # norm's channel axis is the layer's output-channel axis, through per-element ops only
    bias_removed: bool  # aligned, and only identity-like ops between: the mean subtraction removes the bias


def find_scale_invariant(
    model: nn.Module,
    example_batch: Any = None,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    *,
    probe: bool = True,
    tol: float = 1e-4,
) -> list[InvariantParam]:
    """Find the parameters on which the loss is scale-invariant (Definition 1), in ``named_parameters`` order.

    Args:
        model: the model; a DataParallel / DistributedDataParallel / ``torch.compile`` wrapper is looked
            through, and names keep its prefix (``module.``).
        example_batch: optional input, called as ``model(example_batch)``. Enables the recorded-forward graph
            when fx cannot trace, the input rank BatchNorm1d needs, and the numerical probe.
        loss_fn: maps the model output to a scalar loss for the probe. Default: Σ r ⊙ y over the floating
            output tensors, r fixed standard-normal (seed 0): a linear functional that changes with any change
            of the output (a sum of squares misses outputs of constant norm, e.g. after a final LayerNorm).
        probe: run the probe (needs ``example_batch``), in the model's current train/eval mode.
        tol: a candidate is kept when |L(kw)/L(w) − 1| < tol for k ∈ {0.5, 3} and |cos(w, ∂L/∂w)| < tol.

    Returns:
        One ``InvariantParam`` per invariant tensor or weight+bias pair.

    Raises:
        TypeError: ``model`` is not a module or ``loss_fn`` is not callable.
        ValueError: bad ``tol``, ``loss_fn`` without ``example_batch``, or a loss that is not a finite scalar.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if loss_fn is not None and example_batch is None:
        raise ValueError("loss_fn needs example_batch: there is nothing to evaluate it on")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    root, prefix = _unwrap(model)
    trainable = {n for n, p in root.named_parameters() if p.requires_grad}
    tied = _tied(root)
    # forwards run with a batch restore the model and every random state; a trace alone, the random states
    with _preserved(root) if example_batch is not None else _random_states_kept(root) as reset:
        graph = _graph(root, example_batch)
        found = _from_data_flow(root, graph) if graph is not None else []
        found += _from_weight_norm(root)
        loose = graph.loose if graph is not None else set()
        found = [
            f for f in found if all(p in trainable and p not in tied and p not in loose for p in f.params)
        ]
        if probe and example_batch is not None and found:
            found = _probe(root, example_batch, loss_fn, found, tol, reset)
    order = {n: i for i, (n, _) in enumerate(root.named_parameters())}
    found.sort(key=lambda f: order[f.params[0]])
    return [_prefixed(f, prefix) for f in found] if prefix else found


def _prefixed(f: InvariantParam, prefix: str) -> InvariantParam:
    params = tuple(prefix + p for p in f.params)
    norm = ",".join(prefix + n if n else prefix[:-1] for n in f.norm.split(","))
    return replace(f, name="+".join(params), params=params, norm=norm)


# ----------------------------------------------------------------------------------------- structure
def _unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """Look through wrappers whose parameters are the wrapped module's, under a name prefix."""
    prefix = ""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model, prefix = model.module, prefix + "module."
        elif type(model).__name__ == "OptimizedModule" and isinstance(
            getattr(model, "_orig_mod", None), nn.Module
        ):
            model, prefix = model._orig_mod, prefix + "_orig_mod."
        else:
            return model, prefix


def _tied(root: nn.Module) -> set[str]:
    """Names of parameters owned by more than one module object: their gradient mixes several uses."""
    owners: dict[int, set[int]] = defaultdict(set)
    for m in root.modules():
        for p in m._parameters.values():
            if p is not None:
                owners[id(p)].add(id(m))
    return {n for n, p in root.named_parameters() if len(owners[id(p)]) > 1}


def _norm_kind(m: nn.Module | None) -> str | None:
    return next((kind for cls, kind in _NORMS if isinstance(m, cls)), None)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            isinstance(m, _LAYERS)
            or _norm_kind(m) is not None
            or super().is_leaf_module(m, module_qualified_name)
        )


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", "") if not isinstance(func, str) else func
    if name == "__get__":  # a property such as Tensor.shape
        name = getattr(getattr(func, "__self__", None), "__name__", "")
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name  # relu_ acts as relu


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _graph(root: nn.Module, batch: Any) -> _Graph | None:
    try:
        return _fx_graph(root, batch)
    except Exception as err:  # data-dependent control flow and the like: fx cannot trace it
        if batch is None:
            warnings.warn(
                f"torch.fx cannot trace the model ({type(err).__name__}: {err}); pass example_batch to read "
                "the data flow from a recorded forward pass. Only weight-normalised parameters are reported.",
                stacklevel=3,
            )
            return None
    return _recorded_graph(root, batch)


def _fx_graph(root: nn.Module, batch: Any) -> _Graph:
    fx_graph = _Tracer().trace(root)
    if batch is not None:  # input ranks for BatchNorm1d; a failure only leaves them unknown
        from torch.fx.passes.shape_prop import ShapeProp

        with contextlib.suppress(Exception):
            ShapeProp(torch.fx.GraphModule(root, fx_graph)).propagate(batch)
    modules = dict(root.named_modules())
    graph, nodes, meta = _Graph("torch.fx"), {}, set()
    for n in fx_graph.nodes:
        calls = n.op in ("call_function", "call_method")
        name = _op_name(n.target) if calls else str(n.target)
        if calls and (
            name in _SHAPE_QUERIES
            or (name == "getattr" and n.args[1] in _SHAPE_QUERIES)
            or (n.all_input_nodes and all(i in meta for i in n.all_input_nodes))
        ):
            meta.add(n)  # a shape, or arithmetic on shapes
            continue
        node = _Node(name if n.op != "placeholder" else "input")
        if n.op == "get_attr":
            graph.loose.add(name)
        elif n.op == "call_module":
            node.module = modules[name]
            graph.calls[name].append(node)
            first = (
                n.args[0].meta.get("tensor_meta") if n.args and isinstance(n.args[0], torch.fx.Node) else None
            )
            node.in_ndim = len(first.shape) if hasattr(first, "shape") else None
        nodes[n] = node.link([nodes[i] for i in n.all_input_nodes if i not in meta])
    return graph


class _Recorder(TorchFunctionMode):
    """Records the data flow of one forward pass: leaf-module calls and the functional ops between them."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self.names = {id(m): name for name, m in root.named_modules()}
        self.params = {id(p): name for name, p in root.named_parameters()}
        self.graph = _Graph("recorded forward")
        self.made: dict[int, _Node] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique while recording
        self.depth, self.open = 0, []

    def sources(self, obj: Any) -> list[_Node]:
        found = []
        for t in _tensors(obj):
            if id(t) in self.params:
                self.graph.loose.add(self.params[id(t)])
            if id(t) not in self.made:
                self.produced(_Node("input"), t)
            found.append(self.made[id(t)])
        return found

    def produced(self, node: _Node, out: Any) -> None:
        for t in _tensors(out):
            self.made[id(t)] = node
            self.alive.append(t)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = _op_name(func)
        if self.depth == 0 and (name not in _SHAPE_QUERIES or any(True for _ in _tensors(out))):
            self.produced(_Node(name).link(self.sources((args, kwargs))), out)
        return out

    def pre(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.depth += 1  # before reading shapes, so that reading them is not recorded
        node = None
        if self.depth == 1:
            first = next(_tensors(args), None)
            node = _Node(self.names[id(module)], module, in_ndim=None if first is None else first.dim())
            node.link(self.sources((args, kwargs)))
            self.graph.calls[node.name].append(node)
        self.open.append(node)

    def post(self, module: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        node = self.open.pop()
        if node is not None:
            self.produced(node, out)
        self.depth -= 1


def _recorded_graph(root: nn.Module, batch: Any) -> _Graph:
    rec = _Recorder(root)
    handles, tracer = [], _Tracer()
    try:
        for m in root.modules():
            if tracer.is_leaf_module(m, ""):  # first pre-hook: the legacy weight_norm hook then runs inside
                handles.append(m.register_forward_pre_hook(rec.pre, prepend=True, with_kwargs=True))
                handles.append(m.register_forward_hook(rec.post, with_kwargs=True))
        with rec:
            out = root(batch)
        _Node("output").link(rec.sources(out))
    finally:
        for h in handles:
            h.remove()
    return rec.graph


def _step(node: _Node) -> str | None:
    if node.module is None:
        return _OP_STEPS.get(node.name)
    return next((step for types, step in _MODULE_STEPS if isinstance(node.module, types)), None)


def _channel_from_end(layer: nn.Module) -> int:
    """Output-channel axis counted from the end: -1 for Linear, -(d+1) for a d-dimensional convolution."""
    return -1 if isinstance(layer, nn.Linear) else -(len(layer.kernel_size) + 1)


def _norm_channel_from_end(norm: nn.Module, ndim: int | None) -> int | None:
    if isinstance(norm, _InstanceNorm):
        return -norm._get_no_batch_dim()  # channels sit just before the spatial axes, batched or not
    if ndim is not None:
        return 1 - ndim
    return {nn.BatchNorm2d: -3, nn.BatchNorm3d: -4}.get(type(norm))  # BatchNorm1d takes 2-D and 3-D input


def _follow(call: _Node, layer: nn.Module) -> _Edge | None:
    """Walk from a layer call to its norm through single-consumer homogeneous ops; None if anything mixes."""
    path, node, axis_kept, bias_kept = [call.name], call, True, True
    while len(node.users) == 1 and len(node.users[0].inputs) == 1:
        node = node.users[0]
        path.append(node.name)
        kind = _norm_kind(node.module)
        if kind is not None:
            aligned = (
                kind in ("batchnorm", "instancenorm")
                and axis_kept
                and _channel_from_end(layer) == _norm_channel_from_end(node.module, node.in_ndim)
            )
            return _Edge(
                tuple(path), node.name, kind, type(node.module).__name__, aligned, aligned and bias_kept
            )
        step = _step(node)
        if step is None:
            return None
        bias_kept &= step == _IDENTITY
        axis_kept &= step != _LAYOUT
    return None


def _from_data_flow(root: nn.Module, graph: _Graph) -> list[InvariantParam]:
    modules, found = dict(root.named_modules()), []
    for name, calls in graph.calls.items():
        layer = modules[name]
        weight, bias = layer._parameters.get("weight"), layer._parameters.get("bias")
        if not isinstance(layer, _LAYERS) or weight is None:  # no weight: it is parametrized
            continue
        edges = [_follow(c, layer) for c in calls]
        if not edges or any(e is None for e in edges):
            continue
        joint = bias is not None and not all(e.bias_removed for e in edges)
        params = tuple(f"{name}.{p}" if name else p for p in (("weight", "bias") if joint else ("weight",)))
        evidence = [f"data flow ({graph.how}): {' -> '.join(e.path)} ({e.norm_type})" for e in edges]
        if joint:
            evidence.append("the norm does not remove the bias: invariant only jointly with it")
        elif bias is not None:
            evidence.append("the per-channel mean subtraction removes the bias")
        found.append(
            InvariantParam(
                name="+".join(params),
                params=params,
                norm=",".join(dict.fromkeys(e.norm for e in edges)),
                kind=",".join(dict.fromkeys(e.kind for e in edges)),
                per_channel=all(e.aligned for e in edges) and not isinstance(layer, _TCONVS),
                evidence=tuple(evidence),
            )
        )
    return found


def _from_weight_norm(root: nn.Module) -> list[InvariantParam]:
    """Directions v of weight normalisation, w = g·v/‖v‖; per channel when ‖·‖ is taken per dim-0 slice."""
    from torch.nn.utils import parametrizations
    from torch.nn.utils.weight_norm import WeightNorm

    wn_type = getattr(parametrizations, "_WeightNorm", None)
    found = []
    for name, m in root.named_modules():
        where: list[tuple[str, str, int | None]] = []
        plists = getattr(m, "parametrizations", None)
        if wn_type is not None and isinstance(plists, nn.ModuleDict):
            where += [
                (t, f"parametrizations.{t}.original1", pl[0].dim)
                for t, pl in plists.items()
                if len(pl) == 1 and isinstance(pl[0], wn_type)
            ]
        where += [
            (h.name, f"{h.name}_v", h.dim) for h in m._forward_pre_hooks.values() if isinstance(h, WeightNorm)
        ]
        for tensor, v, dim in where:
            param = f"{name}.{v}" if name else v
            evidence = f"weight norm: {tensor} = g·v/‖v‖ (dim={dim}) does not depend on ‖v‖"
            found.append(InvariantParam(param, (param,), name, "weight_norm", dim == 0, (evidence,)))
    return found


# ------------------------------------------------------------------------------------------ numerics
@contextlib.contextmanager
def _random_states_kept(root: nn.Module) -> Iterator[Callable[[], None]]:
    """torch's, Python's and numpy's random states as they were on exit: a traced forward that draws random
    numbers (LayerDrop, ``random.random()``) must not change the user's run. Yields a no-op reset."""
    restore = _host_random_states()
    devices = sorted({t.device.index or 0 for t in root.parameters() if t.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            yield lambda: None
    finally:
        restore()


def _host_random_states() -> Callable[[], None]:
    """Python's and numpy's global random states now; the returned call puts them back."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()  # noqa: NPY002 (the global state user code draws from)

    def restore() -> None:
        random.setstate(py)
        np.random.set_state(npy)  # noqa: NPY002

    return restore


@contextlib.contextmanager
def _preserved(root: nn.Module) -> Iterator[Callable[[], None]]:
    """Restore parameters, buffers, gradients and RNG state on exit; yield a reset for before each forward."""
    tensors = {id(t): t for t in [*root.parameters(), *root.buffers()]}.values()
    saved = [(t, t.detach().clone()) for t in tensors]
    grads = [(p, p.grad, None if p.grad is None else p.grad.clone()) for p in root.parameters()]
    devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    host_random = _host_random_states()
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        cpu_rng = torch.get_rng_state()
        cuda_rng = [torch.cuda.get_rng_state(d) for d in devices]

        def reset() -> None:
            with torch.no_grad():
                for t, s in saved:
                    t.copy_(s)
            torch.set_rng_state(cpu_rng)  # same dropout masks in every pass
            host_random()
            for d, s in zip(devices, cuda_rng, strict=True):
                torch.cuda.set_rng_state(s, d)

        try:
            yield reset
        finally:
            reset()
            for p, g, s in grads:
                p.grad = g
                if g is not None:
                    g.copy_(s)


def _default_loss(out: Any) -> torch.Tensor:
    ys = [t for t in _tensors(out) if t.is_floating_point()]
    if not ys:
        raise ValueError("example_batch: the model output holds no floating-point tensor; pass loss_fn")
    total = torch.zeros((), dtype=torch.float64, device=ys[0].device)
    for y in ys:
        gen = torch.Generator(device=y.device).manual_seed(_SEED)
        r = torch.randn(y.shape, generator=gen, device=y.device)
        total = total + (r * y.float()).sum(dtype=torch.float64).to(total.device)
    return total


def _probe(
    root: nn.Module,
    batch: Any,
    loss_fn: Callable[[Any], torch.Tensor] | None,
    found: list[InvariantParam],
    tol: float,
    reset: Callable[[], None],
) -> list[InvariantParam]:
    """Keep the candidates for which L(kw) = L(w) (Definition 1) and ⟨w, ∂L/∂w⟩ = 0 (Lemma 1, Eq 3).

    Every norm's eps is divided by 1e6 meanwhile: it rescales the normalised output by ≈ |1/k² − 1|·eps/(2σ²),
    7.5e-5 already at σ² = 0.2 and k = 0.5, which would refute weights Definition 1 is about.
    """
    params = dict(root.named_parameters())

    def loss(scaled: tuple[str, ...] = (), k: float = 1.0) -> torch.Tensor:
        reset()  # same parameters, buffers and dropout masks in every pass
        with torch.no_grad():
            for n in scaled:
                params[n].mul_(k)
        value = (loss_fn or _default_loss)(root(batch))
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ""
            raise ValueError(f"loss_fn must return a scalar tensor, got {type(value).__name__} {shape}")
        return value.reshape(())

    names = list(dict.fromkeys(p for f in found for p in f.params))
    kept = []
    with _small_eps(root):
        with torch.enable_grad():
            base = loss()
            grads = torch.autograd.grad(base, [params[n] for n in names], allow_unused=True)
        grad, l0 = dict(zip(names, grads, strict=True)), float(base.detach())
        if not math.isfinite(l0):
            raise ValueError(f"the loss on example_batch is {l0}: check the batch and loss_fn")
        for f in found:
            with torch.no_grad():  # a non-finite L(kw) gives a NaN ratio, which refutes
                lks = [float(loss(f.params, k)) for k in _SCALES]
            ratios = [abs(lk - l0) / max(abs(l0), abs(lk), 1e-300) for lk in lks]
            cos = _cosine([params[n].detach() for n in f.params], [grad[n] for n in f.params])
            probe = ", ".join(f"|L({k:g}w)/L(w) - 1| = {r:.1e}" for k, r in zip(_SCALES, ratios, strict=True))
            lemma = f"lemma 1: cos(w, dL/dw) = {cos:.1e}" if math.isfinite(cos) else "lemma 1: no gradient"
            if max(ratios) < tol and (math.isnan(cos) or abs(cos) < tol):
                kept.append(replace(f, evidence=(*f.evidence, f"probe: {probe}", lemma)))
                continue
            stats = [n for n in f.norm.split(",") if _uses_running_stats(root.get_submodule(n))]
            hint = f"; {', '.join(stats)} normalise with running statistics in eval mode" if stats else ""
            msg = f"{f.name}: dropped, the probe refutes scale invariance ({probe}; {lemma}){hint}"
            warnings.warn(msg, stacklevel=3)
    return kept


def _cosine(ws: list[torch.Tensor], gs: list[torch.Tensor | None]) -> float:
    """cos(w, g) of the concatenated tensors, reduced in float64; NaN without a gradient or at zero norm."""
    if any(g is None for g in gs):
        return math.nan
    dot = sum(float((w.double() * g.double()).sum()) for w, g in zip(ws, gs, strict=True))
    ww = sum(float(w.double().square().sum()) for w in ws)
    gg = sum(float(g.double().square().sum()) for g in gs)
    return dot / math.sqrt(ww * gg) if ww * gg > 0 else math.nan


@contextlib.contextmanager
def _small_eps(root: nn.Module) -> Iterator[None]:
    norms = [
        m for m in root.modules() if _norm_kind(m) is not None and isinstance(getattr(m, "eps", None), float)
    ]
    saved = [m.eps for m in norms]
    try:
        for m in norms:
            m.eps *= 1e-6
        yield
    finally:
        for m, eps in zip(norms, saved, strict=True):
            m.eps = eps


def _uses_running_stats(m: nn.Module) -> bool:
    return isinstance(m, (_BatchNorm, _InstanceNorm)) and not m.training and m.running_mean is not None
