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

from injector import prefix


@dataclass
class TeacherBatch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    idx: torch.Tensor  # [n, k] top-k token ids at the n attended positions (next-token targets)
    logp: torch.Tensor  # [n, k] teacher log-probs (full-vocabulary normalisation) of the top-k
    pos: torch.Tensor | None = None  # [B, L] the positions recorded; None: every one that predicts a real token


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions that predict a real next token: attended and not the last attended one."""
    nxt = torch.zeros_like(mask)
    nxt[:, :-1] = mask[:, 1:]
    return (mask.bool() & nxt.bool())


def _logits(model, input_ids, attention_mask, pos, shared_prefix: int | None = None):
    """Logits at the positions `pos` (boolean [B, L]) through the model's own forward: [n, V] in fp32; the rows'
    common prompt prefix computed once where that saves `shared_prefix` token positions (`prefix.logits`)."""
    return prefix.logits(model, input_ids, attention_mask, pos, shared_prefix).float()


@torch.no_grad()
def teacher_batches(model, batches: list[dict], k: int = 32, group: int = 8) -> list[TeacherBatch]:
    """The model's top-k next-token distribution at every position of each batch (computed once), kept on the
    model's device: each training step then reads it without a host-to-device copy. `group` batches share one
    forward pass (right padding: a row's logits do not depend on the padding after it), which is ~2x faster on a
    CPU than many passes of 2 sequences."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    chunks = [batches[i: i + group] for i in range(0, len(batches), group)]
    for chunk in tqdm(chunks, desc="teacher pass", unit="batch", disable=len(chunks) < 4):
        width = max(b["input_ids"].shape[1] for b in chunk)
        ids, mask = (torch.cat([torch.nn.functional.pad(b[k], (0, width - b[k].shape[1])) for b in chunk]).to(device)
                     for k in ("input_ids", "attention_mask"))
        pos = _positions(mask)
        top = torch.log_softmax(_logits(model, ids, mask, pos), dim=-1).topk(k, dim=-1)
        per_row = pos.sum(1).tolist()
        start = row = 0
        for b in chunk:
            rows = b["input_ids"].shape[0]
            n = sum(per_row[row: row + rows])
            out.append(TeacherBatch(b["input_ids"].to(device), b["attention_mask"].to(device),
                                    top.indices[start: start + n].clone(), top.values[start: start + n].clone()))
            start, row = start + n, row + rows
    model.train(was_training)
    return out


@torch.no_grad()
def start_batches(model, prompts: list[list[int]], pad_id: int, size: int, k: int = 32,
                  group: int = 8, shared_prefix: int | None = None) -> list[TeacherBatch]:
    """The model's top-k distribution of the first answer token of each prompt (token ids of a user turn and the
    assistant's header), right-padded in batches of `size`: the position where an answer's form is decided (a
    sentence or a bare name, the language it is in). `group` batches share one forward pass (as in
    `teacher_batches`: right padding leaves a row's logits as they are), then each is cut back to its own width."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    chunks = [prompts[i: i + size * group] for i in range(0, len(prompts), size * group)]
    for rows in tqdm(chunks, desc="answer starts", unit="pass", disable=len(chunks) < 4):
        width = max(map(len, rows))
        ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        pos = torch.zeros_like(mask, dtype=torch.bool)
        pos[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])] = True
        # one position a row
        top = torch.log_softmax(_logits(model, ids, mask, pos, shared_prefix), dim=-1).topk(k, dim=-1)
        for i in range(0, len(rows), size):
            w, j = max(map(len, rows[i: i + size])), slice(i, i + size)
            out.append(TeacherBatch(ids[j, :w].clone(), mask[j, :w].clone(), top.indices[j].clone(),
                                    top.values[j].clone(), pos[j, :w].clone()))
    model.train(was_training)
    return out


def _with_tail(logp: torch.Tensor) -> torch.Tensor:
    """[n, k] log-probs -> [n, k+1] with the log of the remaining mass appended."""
    rest = torch.log1p(-logp.exp().sum(-1).clamp(max=1 - 1e-6))
    return torch.cat([logp, rest.unsqueeze(-1)], dim=-1)


def kd_loss(model, batch: TeacherBatch, shared_prefix: int | None = None) -> torch.Tensor:
    """KL(teacher || student) over the teacher's top-k + tail buckets, mean over positions; differentiable.
    `shared_prefix`: as in `_logits`."""
    device = next(model.parameters()).device
    mask = batch.attention_mask.to(device)  # no-ops: teacher batches live on the model's device
    return kd_from_logits(_logits(model, batch.input_ids.to(device), mask, positions(batch).to(device),
                                  shared_prefix), batch)


def kd_from_logits(logits: torch.Tensor, batch: TeacherBatch) -> torch.Tensor:
    """`kd_loss` from the student's logits at the batch's `positions` ([n, V]), computed by any forward pass."""
    logq = torch.log_softmax(logits.float(), dim=-1)
    lq = _with_tail(logq.gather(-1, batch.idx.to(logits.device)))
    lp = _with_tail(batch.logp.to(logits.device))
    return (lp.exp() * (lp - lq)).sum(-1).mean()


def positions(batch: TeacherBatch) -> torch.Tensor:
    """The positions [B, L] whose next-token distribution the teacher recorded."""
    return _positions(batch.attention_mask) if batch.pos is None else batch.pos


def joined(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor, batch: TeacherBatch,
           pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training micro-batch and a teacher batch as one batch (both right-padded to the wider of the two): one forward
    and one backward pass instead of two, the same positions, the same results (a row's logits do not depend on
    other rows or on the padding after it). Returns (input_ids, attention_mask, logits_to_keep); the kept logits are
    the training rows' first, then the teacher batch's."""
    width = max(input_ids.shape[1], batch.input_ids.shape[1])

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return (torch.cat([pad(input_ids, pad_id), pad(batch.input_ids.to(input_ids.device), pad_id)]),
            torch.cat([pad(attention_mask, 0), pad(batch.attention_mask.to(attention_mask.device), 0)]),
            torch.cat([pad(keep, False), pad(positions(batch).to(keep.device), False)]))


class Cycler:
    """Seeded endless iteration over teacher batches, reshuffled every pass."""

    def __init__(self, batches: list[TeacherBatch], seed: int = 0):
        self.batches, self.rng, self.order = batches, random.Random(seed), []

    def next(self) -> TeacherBatch:
        if not self.order:
            self.order = list(range(len(self.batches)))
            self.rng.shuffle(self.order)
        return self.batches[self.order.pop()]
