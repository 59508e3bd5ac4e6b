"""Operator training on the logit site without touching the vocabulary: a column bank's losses from
m gathered logits per token instead of all V.

An operator of a column bank (``OperatorBank(columns=m)``) shifts only the logits of its m columns
c, by s_c. With the base model's log-normaliser ``lse`` of each token cached once, the steered one
follows from those columns alone:

    lse_steered - lse = log(1 + sum_c p_c (exp(s_c) - 1)) = delta,      p_c = exp(base_c - lse)
    NLL(target y)     = lse - base_y - s_y + delta                      (s_y = 0 if y is not a column)
    KL(base||steered) = delta - sum_c p_c s_c

so a training step costs T x m x d_model per pair where the dense logit form costs T x V x d_model
(m is a few hundred to a few thousand; V is 50,257 for GPT-2 and 151,936 for Qwen2.5). The
values equal the dense form's (``sequence_nll`` and ``token_kl`` on ``base + shift``) up to
rounding; ``tests/test_operators.py`` checks that.

First-order measurement needs the query loss's gradient only at the columns some operator of
the bank keeps (``loss_gradient``): d nll_t / d logit_c = p_c - [c = y_t], from the base logits
of those columns and each token's ``lse`` (stored once per query batch by ``query_features``),
so a shard's block costs T x u x d_model per query (u: the bank's distinct columns) instead of a
full-vocabulary head pass and its backward.
"""

from __future__ import annotations

import torch

from stride_assets.engine.backbone import Batch, LogitSite, Site
from stride_assets.engine.losses import check_finite, position_weights, shift_targets
from stride_assets.engine.operators import OperatorBank


def applies(site: Site, bank: OperatorBank) -> bool:
    """The column path serves a column bank (without the dense background) on the LM logit site."""
    return isinstance(site, LogitSite) and site.form == "logit" and bank.sparse and bank.G is None


def query_lse(site: LogitSite, feats: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The base log-normaliser (N, T) of a query chunk: what ``query_features`` stores per batch (the same
    computation on the same chunk, so responses from stored and from fresh values are identical)."""
    return torch.logsumexp(site.logits(feats, batch), dim=-1)


def loss_gradient(site: LogitSite, bank: OperatorBank, feats: torch.Tensor, batch: Batch,
                  lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """d (sequence loss) / d logit at the bank's columns: (the columns, sorted (u,), the gradient (N, T, u)).

    Target t of a sequence weighs w_t / sum w (``shift_targets``' weights), so the gradient at position t is
    w_t / sum w * (p_c - [c = y_t]) and 0 at the last position (it predicts nothing)."""
    used = torch.zeros(site.out_dim + 1, dtype=torch.bool, device=bank.column_index.device)
    used[bank.column_index.reshape(-1)] = True
    columns = used[:site.out_dim].nonzero().squeeze(1)  # sorted
    lse = query_lse(site, feats, batch) if lse is None else lse.to(feats.device)
    check_finite(lse, "query loss")
    head = site.head
    grad = feats.float() @ head.weight[columns].float().T  # (N, T, u): the logits, then in place the gradient
    if getattr(head, "bias", None) is not None:
        grad += head.bias[columns].float()
    targets, weights = shift_targets(batch["input_ids"], batch["attention_mask"], batch.get("loss_mask"))
    grad.sub_(lse.unsqueeze(-1)).exp_()  # p_c
    # -1 at each target that is one of the columns (the last position, which has none, gets weight 0 below)
    slot = torch.searchsorted(columns, targets.contiguous()).clamp_max(columns.numel() - 1)
    hit = (columns[slot] == targets).to(grad.dtype)
    grad[:, :-1].scatter_add_(-1, slot.unsqueeze(-1), -hit.unsqueeze(-1))
    scale = grad.new_zeros(grad.shape[:2])
    scale[:, :-1] = weights / weights.sum(-1, keepdim=True).clamp_min(1.0)
    return columns, grad.mul_(scale.unsqueeze(-1))


PROBABILITY_CACHE_BYTES = 256 * 2**20  # a shard's base probabilities (n x T x V) are kept below this size


class _Steered(torch.autograd.Function):
    """Per token, delta = log(1 + sum_c p_c expm1(s_c)) and ps = sum_c p_c s_c for the shifts s = codes @ A at an
    operator's m columns, and the shift of the target's column s_y (0 where the target is not one of them), with
    the gradient written out: d delta / d s_c = p_c exp(s_c) / (1 + u), d ps / d s_c = p_c, d s_y / d s_c = [c = y].
    Autograd over the same expressions keeps about three times as many (N, m, T) intermediates and passes over
    them; this keeps one (expm1 s) and makes two passes in backward.

    codes (N, T, r), A (N, r, m) (each pair's operator), p (N, m, T) (base probabilities, 0 on padded slots),
    where (N, T) (the target's slot among the m columns, m where it has none) or None (s_y is then empty)."""

    @staticmethod
    def forward(ctx, codes: torch.Tensor, A: torch.Tensor, p: torch.Tensor, where: torch.Tensor | None):
        s = torch.bmm(A.transpose(1, 2), codes.transpose(1, 2))  # (N, m, T)
        ps = (p * s).sum(1)
        m = s.shape[1]
        hit = None if where is None else where < m
        slot = None if where is None else where.clamp_max(m - 1).unsqueeze(1)  # (N, 1, T)
        s_y = s.new_zeros(0) if where is None else s.gather(1, slot).squeeze(1) * hit
        em1 = s.exp_().sub_(1)  # (torch's expm1 costs 2x exp here; the error, ~1e-7 per column, is far below a loss's)
        u = (p * em1).sum(1)
        live = u > -1 + 1e-6  # as the clamp below: no gradient where it binds
        delta = torch.log1p(torch.where(live, u, torch.full_like(u, -1 + 1e-6)))
        ctx.save_for_backward(codes, A, p, em1, torch.where(live, 1 / (1 + u), torch.zeros_like(u)), slot, hit)
        return delta, ps, s_y

    @staticmethod
    def backward(ctx, g_delta: torch.Tensor, g_ps: torch.Tensor, g_sy: torch.Tensor):
        codes, A, p, em1, inv, slot, hit = ctx.saved_tensors
        a = (g_delta * inv).unsqueeze(1)  # (N, 1, T)
        grad_s = torch.addcmul(a + g_ps.unsqueeze(1), em1, a).mul_(p)  # p * (exp(s) a + g_ps)
        if slot is not None and g_sy is not None:
            grad_s.scatter_add_(1, slot, (g_sy * hit).unsqueeze(1))
        grad_codes = torch.bmm(grad_s.transpose(1, 2), A.transpose(1, 2))  # (N, T, r)
        grad_A = torch.bmm(codes.transpose(1, 2), grad_s.transpose(1, 2))  # (N, r, m)
        return grad_codes, grad_A, None, None


class ColumnLogits:
    """Losses of column bank ``bank`` on ``site`` from cached features (``feats``: the training cache, whose
    ``lse`` is computed once here, and with its ``batch`` each target's base NLL too; ``rows`` index into it).
    The interface of ``training.SiteLosses``.

    A shard whose base probabilities fit in ``cache_bytes`` (a small vocabulary: the tiny default's are
    ~130 MB per shard of 256) keeps them, laid out (n, V + 1, T) so that a pair's m columns are m contiguous
    rows of T, and a step gathers them instead of computing them from the head (about half a step's
    products). A big vocabulary, given the design's member ``pairs`` (subsets, examples), keeps instead each
    member pair's (m, T - 1) block for the fidelity term when they fit (n x d x m x (T - 1) floats: 198 MB for a
    shard of 256 at d 6, 512 columns, T 64), computed operator by operator in one product per operator (a
    step then gathers 32 blocks instead of 32 x m head rows and their product); non-member pairs (stability)
    and whatever does not fit are computed every step."""

    def __init__(self, site: LogitSite, bank: OperatorBank, feats: torch.Tensor,
                 cache_bytes: int = PROBABILITY_CACHE_BYTES, batch: Batch | None = None,
                 pairs: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.bank = bank
        head = site.head
        self.weight = head.weight.float()  # (V, d)
        self.bias = None if getattr(head, "bias", None) is None else head.bias.float()
        self.V = V = self.weight.shape[0]
        # one zero row / zero bias for the padded column index V
        self._padded_weight = torch.cat([self.weight, self.weight.new_zeros(1, self.weight.shape[1])])
        self._padded_bias = None if self.bias is None else torch.cat([self.bias, self.bias.new_zeros(1)])
        n, T = feats.shape[:2]
        keep = n * T * (V + 1) * 4 <= cache_bytes
        self.p = feats.new_zeros(n, V + 1, T) if keep else None  # row V: the padded slots' 0
        lse = []
        with torch.no_grad():
            for start in range(0, n, 32):
                logits = site.logits(feats[start:start + 32], {})
                lse.append(torch.logsumexp(logits, dim=-1))
                if keep:
                    self.p[start:start + 32, :V] = torch.exp(logits - lse[-1].unsqueeze(-1)).transpose(1, 2)
        self.lse = torch.cat(lse)
        # with the cache's batch: each target's base NLL (n, T-1), lse - base_y, once instead of every step
        self.base_nll = None
        if batch is not None:
            targets = shift_targets(batch["input_ids"], batch["attention_mask"], batch.get("loss_mask"))[0]
            with torch.no_grad():
                self.base_nll = torch.cat([self._base_nll(feats[i:i + 32], targets[i:i + 32], self.lse[i:i + 32])
                                           for i in range(0, n, 32)])
        # slot[k, c]: where output c sits among operator k's columns (m where it is not one of them)
        index = bank.column_index
        m = index.shape[1]
        self.slot = index.new_full((bank.K, V + 1), m)
        self.slot.scatter_(1, index, torch.arange(m, device=index.device).expand_as(index).contiguous())
        self.slot[:, V] = m
        self.pair_codes = self.pair_p = None
        if not keep and pairs is not None and len(pairs[0]) * m * (T - 1) * 4 <= cache_bytes:
            self._keep_member_pairs(feats, *pairs)

    @torch.no_grad()
    def _keep_member_pairs(self, feats: torch.Tensor, subsets: torch.Tensor, examples: torch.Tensor) -> None:
        """``pair_p`` (P, m, T - 1): each member pair's base probabilities at its operator's columns, in the order
        of ``pair_codes`` (subset * n + example, sorted)."""
        n, T = feats.shape[:2]
        codes = subsets.to(feats.device) * n + examples.to(feats.device)
        self.pair_codes = torch.sort(codes).values
        index = self.bank.column_index
        self.pair_p = feats.new_empty(len(codes), index.shape[1], T - 1)
        ops = self.pair_codes // n
        bounds = torch.searchsorted(ops, torch.arange(self.bank.K + 1, device=ops.device)).tolist()
        for k in range(self.bank.K):
            a, b = bounds[k], bounds[k + 1]
            if a == b:  # an operator without members (a draw can leave a subset empty)
                continue
            rows = self.pair_codes[a:b] - k * n
            self.pair_p[a:b] = self._probabilities(feats[rows, :-1], rows, index[k].expand(b - a, -1),
                                                   self.lse[rows][:, :T - 1], shared=True)

    def _probabilities(self, feats: torch.Tensor, rows: torch.Tensor, index: torch.Tensor,
                       lse: torch.Tensor, ops: torch.Tensor | None = None, shared: bool = False) -> torch.Tensor:
        """Base probabilities (N, m, T) of rows ``rows`` at their operators' columns ``index`` (N, m); 0 on padded
        slots. ``ops``: the pairs' operators (kept member pairs are looked up by them); ``shared``: every row has
        the same columns (``index[0]``: one product with the head rows gathered once)."""
        N, T = feats.shape[:2]
        if self.p is not None:
            flat = self.p.view(-1, self.p.shape[-1])
            picked = flat.index_select(0, (rows.unsqueeze(1) * (self.V + 1) + index).reshape(-1))
            return picked.view(N, index.shape[1], -1)[..., :T]
        if self.pair_p is not None and ops is not None and T <= self.pair_p.shape[-1]:
            codes = (ops * self.lse.shape[0] + rows).to(self.pair_codes.device)
            pos = torch.searchsorted(self.pair_codes, codes).clamp_max(len(self.pair_codes) - 1)
            if bool((self.pair_codes[pos] == codes).all()):  # member pairs (fidelity); else computed below
                return self.pair_p.index_select(0, pos)[..., :T]
        if shared:
            logits = (feats.float() @ self._padded_weight[index[0]].T).transpose(1, 2)  # (N, m, T)
        else:
            logits = torch.bmm(self._padded_weight[index], feats.float().transpose(1, 2))  # (N, m, T)
        if self._padded_bias is not None:
            logits = logits + self._padded_bias[index].unsqueeze(-1)
        return torch.exp(logits - lse.unsqueeze(1)) * (index < self.V).unsqueeze(-1)

    def _parts(self, feats: torch.Tensor, rows: torch.Tensor, ops: torch.Tensor, where: torch.Tensor | None = None):
        """Per token: delta (N, T), sum_c p_c s_c (N, T), the target's shift s_y (N, T; empty without ``where``,
        the targets' slots), lse (N, T)."""
        bank = self.bank
        lse = self.lse[rows][:, :feats.shape[1]]
        p = self._probabilities(feats, rows, bank.column_index[ops], lse, ops)
        delta, ps, s_y = _Steered.apply(bank.codes(feats), bank.A[ops], p, where)
        return delta, ps, s_y, lse

    def _base_nll(self, feats: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
        """The base model's NLL of each target (N, T-1): lse - base logit of the target."""
        base_y = (feats[:, :-1].float() * self.weight[targets]).sum(-1)
        if self.bias is not None:
            base_y = base_y + self.bias[targets]
        return lse[:, :targets.shape[1]] - base_y

    def fidelity(self, feats: torch.Tensor, batch: Batch, rows: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
        """Mean over the N pairs of each member's steered sequence NLL (as ``sequence_nll``)."""
        targets, weights = shift_targets(batch["input_ids"], batch["attention_mask"], batch.get("loss_mask"))
        where = self.slot[ops].gather(1, targets)  # (N, T-1): the target's slot among the operator's columns
        delta, _, s_y, lse = self._parts(feats[:, :-1], rows, ops, where)
        base = self._base_nll(feats, targets, lse) if self.base_nll is None else self.base_nll[rows]
        nll = (base - s_y + delta) * weights
        return (nll.sum(-1) / weights.sum(-1).clamp_min(1.0)).mean()

    def stability(self, feats: torch.Tensor, batch: Batch, rows: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
        """Mean over real tokens of KL(base || steered) (as ``token_kl``)."""
        delta, ps, _, _ = self._parts(feats, rows, ops)
        kl = delta - ps
        mask = position_weights(batch["attention_mask"], batch.get("loss_mask")).to(kl.dtype)
        return (kl * mask).sum() / mask.sum().clamp_min(1.0)
