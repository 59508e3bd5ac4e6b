"""The operator bank: a shared basis B (features -> rank-r code) and one r x C matrix per subset.

Operator k shifts the model at its site by ``B(h) @ A[k]`` per token. B is linear by default
(an MLP optionally) and reads standardised features (the feature mean/std of the training
cache are fixed buffers). A zero bank reproduces the base model exactly.

With ``columns=m`` an operator keeps only m of the C outputs (``column_index[k]``, set by
``set_columns``; unused slots hold C and stay zero): in the logit form, the m tokens its members
predict most (``member_columns``), so A is K x r x m and grows with the subsets' text, not with
the vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from stride_assets.engine.artifacts import load_tensors, read_json, save_tensors, write_json


SCATTERED_CACHE_BYTES = 128 * 2**20  # a column bank's operators scattered for responses are kept below this


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
        columns: int | None = None,
        output_rank: int | None = None,
        background: bool = False,
    ):
        super().__init__()
        if columns is not None and output_rank is not None:
            raise ValueError("columns and output_rank exclude each other")
        if columns is not None and not 1 <= columns <= out_dim:
            raise ValueError(f"columns={columns} out of range 1..{out_dim}")
        self.spec: dict[str, Any] = dict(
            K=K, in_dim=in_dim, out_dim=out_dim, rank=rank, basis=basis, mlp_hidden=mlp_hidden, columns=columns,
            output_rank=output_rank, background=background,
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
        self.A = nn.Parameter(torch.randn(K, rank, columns or output_rank or out_dim, generator=gen) * init_scale)
        # a shared output basis U (s x C), learned with B: operator k shifts by B(h) A_k U
        self.U = (nn.Parameter(torch.randn(output_rank, out_dim, generator=gen) / output_rank**0.5)
                  if output_rank else None)
        # with columns: one shared r x C matrix G for every output, weighted per operator (a_k, r): the
        # context-dependent push every operator gives the outputs it does not keep
        self.G = nn.Parameter(torch.zeros(rank, out_dim)) if background else None
        self.a = nn.Parameter(torch.ones(K, rank)) if background else None
        self.register_buffer("column_index", torch.full((K, columns or 0), out_dim, dtype=torch.long))
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

    @property
    def sparse(self) -> bool:
        return self.spec["columns"] is not None

    def set_columns(self, index: torch.Tensor) -> "OperatorBank":
        """Operator k's outputs: ``index[k]`` (K x m, padded with C); slots padded get zero weights."""
        if index.shape != self.column_index.shape:
            raise ValueError(f"column index of shape {tuple(index.shape)}, expected {tuple(self.column_index.shape)}")
        with torch.no_grad():
            self.column_index.copy_(index)
            self.A.masked_fill_((index == self.spec["out_dim"]).unsqueeze(1), 0.0)
        return self

    def shift(self, feats: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
        """Shift of operator ``ops[i]`` on row i: (N, T, in_dim), (N,) -> (N, T, C)."""
        small = torch.bmm(self.codes(feats), self.A[ops])
        if self.U is not None:
            return small @ self.U
        if not self.sparse:
            return small
        N, T, m = small.shape
        index = self.column_index[ops].unsqueeze(1).expand(N, T, m)
        full = small.new_zeros(N, T, self.spec["out_dim"] + 1).scatter_add(-1, index, small)[..., :-1]
        if self.G is not None:
            full = full + (self.codes(feats) * self.a[ops].unsqueeze(1)) @ self.G
        return full

    def damping(self, ops: torch.Tensor) -> torch.Tensor:
        """Mean over ``ops`` of ||W^T A_k (U)||_F^2: the size of the weight change operator k makes on the standardised
        features (W the linear basis; the identity for an MLP basis), so rescaling B against A cannot shrink it."""
        A = self.A[ops]
        basis = self.basis
        G = basis.weight @ basis.weight.T if isinstance(basis, nn.Linear) else None
        GA = A if G is None else G @ A
        if self.U is not None:
            GA = GA @ (self.U @ self.U.T)
        return (A * GA).sum((1, 2)).mean()

    def dense_A(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Operators ``start:stop`` as full r x C matrices (a column bank scattered into its columns)."""
        A = self.A[start:stop]
        if not self.sparse:
            return A
        index = self.column_index[start:stop]
        C = self.spec["out_dim"]
        full = A.new_zeros(A.shape[0], A.shape[1], C + 1)
        return full.scatter(-1, index.unsqueeze(1).expand(-1, A.shape[1], -1), A)[..., :C]

    def contract(self, projected: torch.Tensor, chunk_elements: int = 1 << 24,
                 columns: torch.Tensor | None = None) -> torch.Tensor:
        """sum_{r,c} projected[n, r, c] * A_k[r, c] for every operator: (N, r, C) -> (N, K).

        A column bank gathers each operator's m columns of ``projected`` when m is small against its
        width W (C, or u with ``columns``; a big vocabulary), and otherwise scatters chunks of operators
        into W + 1 wide matrices (the last: unused slots) for one BLAS product (measured faster while
        m > W / 8). ``columns`` (u,): a column bank's ``projected`` is given only at those outputs,
        (N, r, u), and every column the bank keeps is among them."""
        C = self.spec["out_dim"]
        if columns is not None and (not self.sparse or self.G is not None):
            raise ValueError("projected at some columns only serves a column bank without background")
        if self.U is not None:
            return torch.einsum("nrs,krs->nk", projected @ self.U.T, self.A)
        if not self.sparse:
            return torch.einsum("nrc,krc->nk", projected, self.A)
        N, r, m = projected.shape[0], projected.shape[1], self.A.shape[-1]
        index = self.column_index
        if columns is not None:  # output c -> its position in ``columns``; C (unused slots) -> the zero column
            where = index.new_full((C + 1,), columns.numel())
            where[columns] = torch.arange(columns.numel(), device=index.device)
            index = where[index]
        W = projected.shape[-1]
        padded = torch.cat([projected, projected.new_zeros(N, r, 1)], dim=-1)  # (N, r, W + 1)
        out = []
        if 8 * m > W:
            flat = padded.reshape(N, -1)
            out = [flat @ full.T for full in self._scattered(index, W, columns, chunk_elements)]
        else:
            step = max(1, chunk_elements // max(1, N * r * m))
            for start in range(0, self.K, step):
                picked = padded[:, :, index[start:start + step]]  # (N, r, k, m)
                out.append(torch.einsum("nrkm,krm->nk", picked, self.A[start:start + step]))
        sparse = torch.cat(out, dim=1)
        if self.G is None:
            return sparse
        return sparse + (projected * self.G).sum(-1) @ self.a.T

    def _scattered(self, index: torch.Tensor, W: int, columns: torch.Tensor | None,
                   chunk_elements: int) -> list[torch.Tensor]:
        """The operators scattered into W + 1 wide rows (``index``: each one's slots there), in chunks of
        (k, r (W + 1)). Without autograd they are kept for the next call while A, the columns and ``columns``
        stay the same and they fit ``SCATTERED_CACHE_BYTES`` (a bank's responses reuse them for every query
        batch: building them cost about a quarter of a query batch's responses on the default shapes)."""
        r = self.A.shape[1]
        versions = (self.A._version, self.column_index._version, W)
        cached = getattr(self, "_scattered_cache", None)
        if cached is not None and not torch.is_grad_enabled():
            A0, kept_versions, kept_columns, chunks = cached  # A0: a replaced parameter is a new A
            same_columns = (kept_columns is None) == (columns is None) and (
                columns is None or torch.equal(kept_columns, columns))
            if A0 is self.A and kept_versions == versions and same_columns:
                return chunks
        step = max(1, chunk_elements // max(1, r * (W + 1)))
        chunks = []
        for start in range(0, self.K, step):
            A, at = self.A[start:start + step], index[start:start + step]
            full = A.new_zeros(A.shape[0], r, W + 1).scatter_(-1, at.unsqueeze(1).expand(-1, r, -1), A)
            chunks.append(full.view(A.shape[0], -1))
        keep = not torch.is_grad_enabled() and self.K * r * (W + 1) * self.A.element_size() <= SCATTERED_CACHE_BYTES
        self._scattered_cache = (self.A, versions, None if columns is None else columns.clone(), chunks) if keep else None
        return chunks

    def zero_(self) -> "OperatorBank":
        with torch.no_grad():
            self.A.zero_()
            if self.G is not None:
                self.G.zero_()
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
        state = load_tensors(path)
        state.setdefault("column_index", bank.column_index)  # banks saved before columns existed
        bank.load_state_dict(state)
        return bank.eval()


def member_columns(membership, targets: torch.Tensor, mask: torch.Tensor, out_dim: int, cap: int) -> torch.Tensor:
    """Per subset, the (at most ``cap``) outputs its members' targets hit most often: K x m, padded with ``out_dim``.

    ``targets`` (n, T) are each example's target ids (next tokens; class labels with T = 1) where
    ``mask`` is 1. m is the largest count any subset needs, at most ``cap``.
    """
    targets, mask = targets.cpu(), mask.cpu().bool()
    counts = []
    for k in range(membership.shape[0]):
        members = torch.as_tensor(membership.indices[membership.indptr[k]:membership.indptr[k + 1]], dtype=torch.long)
        hit = targets[members][mask[members]]
        counts.append(torch.bincount(hit, minlength=out_dim))
    counts = torch.stack(counts)  # (K, C)
    m = max(1, min(cap, int((counts > 0).sum(1).max())))
    top = counts.topk(m, dim=1)
    return torch.where(top.values > 0, top.indices, torch.full_like(top.indices, out_dim))


def top_direction_energy(bank: OperatorBank) -> float:
    """Share of the stacked per-subset matrices' energy in their top singular direction.

    Near 1 means collapse: every operator learned the same global shift.
    """
    flat = bank.A.detach().reshape(bank.K, -1)
    s = torch.linalg.svdvals(flat)
    return float((s[0] ** 2 / (s**2).sum().clamp_min(1e-30)).item())
