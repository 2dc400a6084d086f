"""The retrieval loss: an in-batch sampled softmax with same-item masking and logQ correction."""

from __future__ import annotations

import numpy as np


def in_batch_softmax_loss(user_emb, item_emb, temperature: float, item_keys=None, log_q=None):
    """Softmax over the batch's items for each user; the diagonal is the positive.

    item_keys: per-row item identity; other rows holding the same item are not negatives (masked).
    log_q: per-row log sampling probability of the item (logQ correction, Yi et al. 2019).
    """
    import torch

    logits = user_emb @ item_emb.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    if item_keys is not None:
        keys = _item_codes(item_keys)
        same = keys.unsqueeze(0) == keys.unsqueeze(1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    targets = torch.arange(logits.shape[0])
    return torch.nn.functional.cross_entropy(logits, targets)


def _item_codes(item_keys):
    """int64 codes equal where the items are: integer keys (e.g. catalog indexes) as they are,
    other keys (e.g. structured rows) through np.unique."""
    import torch

    keys = np.asarray(item_keys)
    if keys.ndim != 1 or not np.issubdtype(keys.dtype, np.integer):
        keys = np.unique(keys, return_inverse=True)[1].ravel()
    return torch.from_numpy(keys.astype(np.int64, copy=False))
