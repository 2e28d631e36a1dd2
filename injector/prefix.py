"""A batch's common prompt prefix, computed once.

Every training conversation starts with the chat template's prefix: SmolLM2's default system prompt and the user
header are 24 of a fact pair's ~56 tokens. Rows of a right-padded batch that share their first P tokens have the
same hidden states there (attention is causal), so the prefix is run once, its keys and values are repeated for
every row, and the rest of each row attends to them. The logits and the gradients are those of the full pass (a
test checks both); the batch computes P x (rows - 1) fewer token positions, for one more short pass. On a CPU,
bound by arithmetic, that pays once the positions saved outweigh what one more pass costs whatever its length
(every weight is read once more; `train.shared_prefix_min_tokens`, docs/BENCHMARKS.md); on an accelerator, bound
by launching kernels, it would not (there the replay rows ride in the training pass instead).
"""

from __future__ import annotations

import torch


def common_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> int:
    """Length of the prefix every row shares: the same tokens, all attended, none of whose logits are kept, and at
    least one position of every row left after it."""
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0) & ~keep.any(0)
    return min(int(same.int().cumprod(0).sum()), input_ids.shape[1] - 1)


def logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor,
           min_saved: int | None) -> torch.Tensor:
    """`model(...).logits` at the positions `keep` (boolean [B, L], row-major order, as `logits_to_keep` gives
    them), the rows' common prefix computed once where that saves at least `min_saved` token positions (None:
    never; and never without an attention mask, as with padding-free batches)."""
    n = common_prefix(input_ids, attention_mask, keep) \
        if min_saved is not None and attention_mask is not None and input_ids.shape[0] > 1 else 0
    if n > 0 and n * (input_ids.shape[0] - 1) >= min_saved:
        cache = _backbone(model)(input_ids=input_ids[:1, :n], attention_mask=attention_mask[:1, :n],
                                 use_cache=True).past_key_values
        if cache is not None:  # None where the model keeps no cache (gradient checkpointing): the full pass
            cache.batch_repeat_interleave(input_ids.shape[0])
            return model(input_ids=input_ids[:, n:], attention_mask=attention_mask, past_key_values=cache,
                         logits_to_keep=keep[:, n:], use_cache=False).logits
    return model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False).logits


def _backbone(model):
    """The decoder stack without the LM head (the prefix needs no logits; a head over the vocabulary reads ~110 MB
    of weights even for one position): `base_model` of the (PEFT-wrapped) causal LM, the adapter's layers in it."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model


def flat_logits(model, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                min_saved: int | None) -> list[torch.Tensor]:
    """`logits` of several right-padded batches (input_ids, attention_mask, keep) in one forward pass: every row's
    attended tokens end to end in one padding-free sequence, each attending causally to its own tokens only (a
    block-diagonal mask, positions restarting per row), the rows' common prefix computed once where that saves at
    least `min_saved` positions. The prefix's logits are computed once too, for the rows that keep them (replay rows
    distil every position, the chat template's system prompt included). One pass instead of one a batch, and no
    padding: on a CPU a pass costs ~0.2-0.3 s before any arithmetic (every weight read once more) and padding is
    arithmetic on nothing (docs/BENCHMARKS.md). A row's logits are those of its own pass (a test checks them and the
    gradients). Returns each batch's kept logits, in order; where the attention takes no custom mask (neither sdpa
    nor eager) or a batch is not right-padded, each batch's own `logits`."""
    impl = getattr(model.config, "_attn_implementation", None)
    rows = [(ids[:n], kp[:n]) for b_ids, b_mask, b_keep in batches
            for ids, kp, n in zip(b_ids, b_keep, b_mask.sum(1).tolist(), strict=True)]
    padded_right = all(int(m.sum()) == int(m.cumprod(1).sum()) for _, m, _ in batches)  # attended, then padding
    if impl not in ("sdpa", "eager") or not padded_right or any(not len(ids) for ids, _ in rows):
        return [logits(model, *b, min_saved) for b in batches]
    n = _flat_prefix([r for r, _ in rows]) if min_saved is not None else 0
    n = n if n * (len(rows) - 1) >= (min_saved or 1) else 0
    cache = head = None
    if n:
        first = rows[0][0][None, :n]
        pre_keep = torch.stack([k[:n] for _, k in rows]).any(0)  # prefix positions some row keeps
        if pre_keep.any():
            out = model(input_ids=first, logits_to_keep=pre_keep[None], use_cache=True)
            cache, head = out.past_key_values, out.logits
        else:  # no logits: the decoder stack alone
            cache = _backbone(model)(input_ids=first, use_cache=True).past_key_values
        if cache is None:  # no cache kept (gradient checkpointing): the prefix in every row
            n, head = 0, None
    ids = torch.cat([r[n:] for r, _ in rows])[None]
    pos = torch.cat([torch.arange(n, len(r), device=ids.device) for r, _ in rows])[None]
    seg = torch.cat([torch.full((len(r) - n,), i, device=ids.device) for i, (r, _) in enumerate(rows)])
    allow = (seg[:, None] == seg[None, :]).tril()
    allow = torch.cat([allow.new_ones(len(seg), n), allow], 1)[None, None]  # [1, 1, T, n + T]: the prefix, then own
    if impl == "eager":  # an additive mask
        dtype = next(model.parameters()).dtype
        allow = torch.zeros(allow.shape, dtype=dtype, device=ids.device).masked_fill(~allow, torch.finfo(dtype).min)
    out = model(input_ids=ids, position_ids=pos, attention_mask=allow, past_key_values=cache,
                logits_to_keep=torch.cat([k[n:] for _, k in rows])[None], use_cache=False).logits
    if head is not None:  # each row's prefix logits (the shared ones), then its own, in row-major order
        slot = (pre_keep.cumsum(0) - 1).tolist()
        index, at = [], head.shape[0]
        for _, k in rows:
            own = int(k[n:].sum())
            index += [slot[i] for i in k[:n].nonzero().flatten().tolist()] + list(range(at, at + own))
            at += own
        out = torch.cat([head, out]).index_select(0, torch.tensor(index, device=out.device))
    return list(out.split([int(b_keep.sum()) for _, _, b_keep in batches]))


def _flat_prefix(rows: list[torch.Tensor]) -> int:
    """The length of the token prefix every row shares, at least one token of each row left."""
    n = min(map(len, rows)) - 1
    for r in rows[1:]:
        n = int((r[:n] == rows[0][:n]).int().cumprod(0).sum())
    return n
