"""Next-token losses shared by base-model training, operator training and measurement."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stride_assets.engine.errors import StrideNumericalError


def shift_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and weights for next-token prediction: position t predicts token t+1.

    Returns ``(targets, weights)`` of shape (N, T-1); weights are 1 where the target is a real token
    (and, with a ``loss_mask`` (N, T), a scored one: the completion of an instruction or chat row).
    """
    targets = input_ids[:, 1:]
    weights = (attention_mask[:, 1:] * attention_mask[:, :-1]).to(torch.float32)
    if loss_mask is not None:
        weights = weights * loss_mask[:, 1:].to(torch.float32)
    return targets, weights


def position_weights(attention_mask: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Weights (N, T) of the output positions a distribution loss (KL) covers: every real token, or with a
    ``loss_mask`` the positions that predict a scored token."""
    if loss_mask is None:
        return attention_mask.to(torch.float32)
    out = torch.zeros(attention_mask.shape, dtype=torch.float32, device=attention_mask.device)
    out[:, :-1] = shift_targets(attention_mask, attention_mask, loss_mask)[1]
    return out


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL (N, T-1) of next-token prediction and the matching 0/1 weights."""
    targets, weights = shift_targets(input_ids, attention_mask, loss_mask)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return nll * weights, weights


def sequence_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token NLL per sequence (over its scored targets), shape (N,)."""
    nll, weights = token_nll(logits, input_ids, attention_mask, loss_mask)
    return nll.sum(-1) / weights.sum(-1).clamp_min(1.0)


def token_kl(base_logits: torch.Tensor, steered_logits: torch.Tensor, attention_mask: torch.Tensor,
             loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over real (with ``loss_mask``: scored, see ``position_weights``) positions of KL(base || steered)."""
    base_logp = F.log_softmax(base_logits.float(), dim=-1)
    steered_logp = F.log_softmax(steered_logits.float(), dim=-1)
    kl = (base_logp.exp() * (base_logp - steered_logp)).sum(-1)
    mask = position_weights(attention_mask, loss_mask).to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp_min(1.0)


def check_finite(value: torch.Tensor, what: str) -> torch.Tensor:
    """Raise a clear error instead of carrying NaN/inf losses onwards."""
    if not torch.isfinite(value).all():
        raise StrideNumericalError(f"{what} is not finite (NaN or inf); lower the learning rate or check the inputs")
    return value
