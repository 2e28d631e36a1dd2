"""Logit distillation against the starting model on replay text (every token, not only answers).

Replay with hard labels keeps the reference's greedy answers; matching its whole next-token distribution at every
position of the replay conversations keeps much more of the model (general perplexity, locality). The teacher is
the model as training starts (the champion's adapter, or the zero-init adapter = the base), so its top-k
log-probabilities are computed once before the first step and kept in memory (k=32: ~0.1 MB per replay pair).

loss_kd = mean over positions of the KL between teacher and student over k+1 buckets: the teacher's top-k tokens
and the rest of the vocabulary merged into one (exact KL of that partition; zero at the first step).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class TeacherBatch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    idx: torch.Tensor  # [n, k] top-k token ids at the n attended positions (next-token targets)
    logp: torch.Tensor  # [n, k] teacher log-probs (full-vocabulary normalisation) of the top-k


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions that predict a real next token: attended and not the last attended one."""
    nxt = torch.zeros_like(mask)
    nxt[:, :-1] = mask[:, 1:]
    return (mask.bool() & nxt.bool())


def _hidden(model, input_ids, attention_mask):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return inner, hidden


@torch.no_grad()
def teacher_batches(model, batches: list[dict], k: int = 32) -> list[TeacherBatch]:
    """The model's top-k next-token distribution at every position of each batch (computed once)."""
    was_training = model.training
    model.eval()
    out = []
    for b in batches:
        ids, mask = b["input_ids"], b["attention_mask"]
        inner, hidden = _hidden(model, ids, mask)
        pos = _positions(mask)
        logits = inner.get_output_embeddings()(hidden[pos]).float()
        top = torch.log_softmax(logits, dim=-1).topk(k, dim=-1)
        out.append(TeacherBatch(ids, mask, top.indices, top.values))
    model.train(was_training)
    return out


def _with_tail(logp: torch.Tensor) -> torch.Tensor:
    """[n, k] log-probs -> [n, k+1] with the log of the remaining mass appended."""
    rest = torch.log1p(-logp.exp().sum(-1).clamp(max=1 - 1e-6))
    return torch.cat([logp, rest.unsqueeze(-1)], dim=-1)


def kd_loss(model, batch: TeacherBatch) -> torch.Tensor:
    """KL(teacher || student) over the teacher's top-k + tail buckets, mean over positions; differentiable."""
    device = next(model.parameters()).device
    inner, hidden = _hidden(model, batch.input_ids.to(device), batch.attention_mask.to(device))
    pos = _positions(batch.attention_mask.to(device))
    logq = torch.log_softmax(inner.get_output_embeddings()(hidden[pos]).float(), dim=-1)
    lq = _with_tail(logq.gather(-1, batch.idx.to(device)))
    lp = _with_tail(batch.logp.to(device))
    return (lp.exp() * (lp - lq)).sum(-1).mean()


class Cycler:
    """Seeded endless iteration over teacher batches, reshuffled every pass."""

    def __init__(self, batches: list[TeacherBatch], seed: int = 0):
        self.batches, self.rng, self.order = batches, random.Random(seed), []

    def next(self) -> TeacherBatch:
        if not self.order:
            self.order = list(range(len(self.batches)))
            self.rng.shuffle(self.order)
        return self.batches[self.order.pop()]
