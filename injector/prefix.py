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
