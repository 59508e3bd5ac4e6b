"""The operator bank: a shared basis B (features -> rank-r code) and one r x C matrix per subset.

Operator k shifts the model at its site by ``B(h) @ A[k]`` per token. B is linear by default
(an MLP optionally) and reads standardised features (the feature mean/std of the training
cache are fixed buffers). A zero bank reproduces the base model exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from stride_assets.engine.artifacts import load_tensors, read_json, save_tensors, write_json


class OperatorBank(nn.Module):
    def __init__(
        self,
        K: int,
        in_dim: int,
        out_dim: int,
        rank: int,
        basis: str = "linear",
        mlp_hidden: int = 64,
        init_scale: float = 1e-3,
        seed: int = 0,
    ):
        super().__init__()
        self.spec: dict[str, Any] = dict(
            K=K, in_dim=in_dim, out_dim=out_dim, rank=rank, basis=basis, mlp_hidden=mlp_hidden
        )
        gen = torch.Generator().manual_seed(seed)
        if basis == "linear":
            self.basis: nn.Module = nn.Linear(in_dim, rank, bias=False)
        elif basis == "mlp":
            self.basis = nn.Sequential(nn.Linear(in_dim, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, rank))
        else:
            raise ValueError(f"unknown basis {basis!r} (linear or mlp)")
        with torch.no_grad():
            for p in self.basis.parameters():
                if p.ndim == 2:
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
                else:
                    p.zero_()
        self.A = nn.Parameter(torch.randn(K, rank, out_dim, generator=gen) * init_scale)
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))

    @property
    def K(self) -> int:
        return self.A.shape[0]

    def set_feature_stats(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Standardise the basis input with the mean/std of the cached features (real tokens only)."""
        flat = feats.reshape(-1, feats.shape[-1])
        if mask is not None:
            flat = flat[mask.reshape(-1).bool()]
        self.feat_mean.copy_(flat.mean(0))
        self.feat_std.copy_(flat.std(0).clamp_min(1e-6))

    def codes(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, T, in_dim) -> (N, T, r)."""
        return self.basis((feats - self.feat_mean) / self.feat_std)

    def shift(self, feats: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
        """Shift of operator ``ops[i]`` on row i: (N, T, in_dim), (N,) -> (N, T, C)."""
        return torch.bmm(self.codes(feats), self.A[ops])

    def zero_(self) -> "OperatorBank":
        with torch.no_grad():
            self.A.zero_()
        return self

    def save(self, path: Path) -> Path:
        """Tensors as safetensors plus ``<name>.json`` with the shape spec beside them.

        (The spec is not put in the safetensors header: its metadata map is written in
        random order, which would make identical banks hash differently.)
        """
        path = Path(path)
        write_json(self.spec, path.with_suffix(".json"))
        return save_tensors(dict(self.state_dict()), path)

    @classmethod
    def load(cls, path: Path) -> "OperatorBank":
        path = Path(path)
        bank = cls(**read_json(path.with_suffix(".json")))
        bank.load_state_dict(load_tensors(path))
        return bank.eval()


def top_direction_energy(bank: OperatorBank) -> float:
    """Share of the stacked per-subset matrices' energy in their top singular direction.

    Near 1 means collapse: every operator learned the same global shift.
    """
    flat = bank.A.detach().reshape(bank.K, -1)
    s = torch.linalg.svdvals(flat)
    return float((s[0] ** 2 / (s**2).sum().clamp_min(1e-30)).item())
