"""A small character-level GPT: a pre-LayerNorm decoder with optional QK-norm, for the transformer
experiment of `smdyn reproduce` (docs/design.md §6: rotational equilibrium beyond the paper's networks).

Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2, 2019): pre-LayerNorm blocks
x + attn(LN(x)), x + mlp(LN(x)). QK-norm (Dehghani et al., "Scaling Vision Transformers to 22 Billion
Parameters", ICML 2023, arXiv 2302.05442) normalises queries and keys per head before the dot product.

Which weights are scale-invariant (Definition 1 of Wan et al.) decides which equilibrium theory applies:

- with QK-norm, each head's rows of ``attn.q`` and ``attn.k`` feed a LayerNorm / RMSNorm over that head's
  features, so the loss does not change when the weight is scaled: they are scale-invariant;
- ``attn.v``, ``attn.o``, ``mlp.fc``, ``mlp.proj``, the embeddings and the head are not: their output is
  added to the residual stream or read by the softmax without a normalisation in between.

Module names group by block and role: ``blocks.<i>.attn.{q,k,v,o}``, ``blocks.<i>.attn.{q_norm,k_norm}``,
``blocks.<i>.mlp.{fc,proj}``, ``blocks.<i>.{ln1,ln2}``, ``embed``, ``position``, ``norm``, ``head``.
Linear layers have no bias, so every hidden weight is one matrix (what Muon orthogonalises).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from smdyn.experiments.checks import as_int

__all__ = ["GPT", "QK_NORMS", "gpt"]

#: Accepted ``qk_norm`` values: no QK-norm, LayerNorm or RMSNorm over each head's features.
QK_NORMS = ("none", "layernorm", "rmsnorm")


def _qk_norm(kind: str, dim: int) -> nn.Module | None:
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim)
    return None


class Attention(nn.Module):
    """Causal multi-head self-attention with separate q, k, v, o projections (so q and k can be
    scale-invariant on their own under QK-norm)."""

    def __init__(self, width: int, heads: int, qk_norm: str) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.o = nn.Linear(width, width, bias=False)
        self.q_norm = _qk_norm(qk_norm, width // heads)
        self.k_norm = _qk_norm(qk_norm, width // heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        shape = (b, t, self.heads, d // self.heads)
        q, k, v = self.q(x).view(shape), self.k(x).view(shape), self.v(x).view(shape)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """fc (width → ratio·width) → GELU → proj (back to width)."""

    def __init__(self, width: int, ratio: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, ratio * width, bias=False)
        self.proj = nn.Linear(ratio * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, width: int, heads: int, ratio: int, qk_norm: str) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, qk_norm)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width, ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A character-level decoder: ``[B, T]`` token ids → ``[B, T, num_classes]`` next-token logits.

    Args:
        num_classes: vocabulary size (from the data).
        length: context length T (from the data); positions are learned embeddings.
        width: model width d; ``heads`` must divide it.
        depth: number of blocks.
        heads: attention heads.
        mlp_ratio: hidden width of the MLP over d.
        qk_norm: one of `QK_NORMS`.
        tie: share the token embedding with the output head.

    Initialisation as GPT-2: normal(0, 0.02), the residual projections (``attn.o``, ``mlp.proj``) scaled by
    1/√(2·depth). About 12·d²·depth + (2V + T)·d parameters untied (1.02 M at d = 128, depth 5, V = 98,
    T = 64); `parameter_roles` says which optimizer trains what.
    """

    def __init__(
        self,
        num_classes: int,
        length: int,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
        qk_norm: str = "layernorm",
        tie: bool = False,
    ) -> None:
        num_classes = as_int("num_classes", num_classes, 2)
        length = as_int("length", length, 1)
        width = as_int("width", width, 1)
        depth = as_int("depth", depth, 1)
        heads = as_int("heads", heads, 1)
        mlp_ratio = as_int("mlp_ratio", mlp_ratio, 1)
        if width % heads:
            raise ValueError(f"heads ({heads}) must divide width ({width})")
        if qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {', '.join(QK_NORMS)}, got {qk_norm!r}")
        if not isinstance(tie, bool):
            raise TypeError(f"tie must be true or false, got {type(tie).__name__} {tie!r}")
        super().__init__()
        self.length = length
        self.embed = nn.Embedding(num_classes, width)
        self.position = nn.Embedding(length, width)
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio, qk_norm) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes, bias=False)
        self._init(depth)
        if tie:
            self.head.weight = self.embed.weight

    def _init(self, depth: int) -> None:
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = (
                    0.02 / math.sqrt(2 * depth)
                    if name.endswith(("attn.o.weight", "mlp.proj.weight"))
                    else 0.02
                )
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.length:
            raise ValueError(f"sequence of {t} tokens is longer than the context length {self.length}")
        pos = torch.arange(t, device=idx.device)
        x = self.embed(idx) + self.position(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def parameter_roles(self) -> dict[str, str]:
        """Each parameter's role, by name: ``"matrix"`` (the hidden 2-D weights of the blocks: what Muon
        trains), ``"embedding"`` (token and position embeddings, the head) or ``"gain"`` (norm weights and
        biases, which conventionally get no weight decay)."""
        roles = {}
        for name, p in self.named_parameters():
            if p.dim() < 2:
                roles[name] = "gain"
            elif name.startswith("blocks."):
                roles[name] = "matrix"
            else:
                roles[name] = "embedding"
        return roles


def gpt(
    num_classes: int,
    length: int = 64,
    width: int = 128,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: int = 4,
    qk_norm: str = "layernorm",
    tie: bool = False,
) -> GPT:
    """A small character-level GPT; see `GPT`."""
    return GPT(num_classes, length, width, depth, heads, mlp_ratio, qk_norm, tie)
