"""Losses over groups of one positive and n-1 negatives (the positive is always column 0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def localized_contrastive_loss(scores: torch.Tensor) -> torch.Tensor:
    """Localized contrastive estimation (LCE): softmax cross-entropy over each group, target = column 0.

    scores: (G, n) float logits; row g holds group g's scores, its positive first, then its n-1 negatives.
    Returns the mean over the G groups, a scalar. Computed in fp32 whatever the input dtype.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"LCE needs scores of shape (groups, n >= 2), got {tuple(scores.shape)}")
    targets = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)  # (G,)
    return F.cross_entropy(scores.float(), targets)


def pointwise_bce_loss(scores: torch.Tensor) -> torch.Tensor:
    """Pointwise binary cross-entropy: label 1 for column 0 (the positive), 0 for the other columns.

    scores: (G, n) float logits, the same layout as `localized_contrastive_loss` (n >= 1).
    Returns the mean over all G * n pairs, a scalar, in fp32.
    """
    if scores.dim() != 2:
        raise ValueError(f"BCE needs scores of shape (groups, n), got {tuple(scores.shape)}")
    labels = torch.zeros_like(scores, dtype=torch.float32)  # (G, n)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(scores.float(), labels)


LOSSES = {"lce": localized_contrastive_loss, "bce": pointwise_bce_loss}


def get_loss(name: str):
    """The loss function for a `--loss` name (`lce` or `bce`)."""
    try:
        return LOSSES[name]
    except KeyError:
        from pyserini_ssm.errors import UserError

        raise UserError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}") from None
