"""Elastic weight consolidation over the trainable LoRA parameters.

penalty = lambda * sum_i F_i (theta_i - theta*_i)^2, with theta* the starting adapter (the champion; zero-init
LoRA on a first run) and F the diagonal Fisher on replay data, normalised to mean 1 so that lambda reads as
"cost per unit squared distance of an average-importance parameter". Computed once per run, cached by model.
"""

from __future__ import annotations

from pathlib import Path

import torch


def fisher_diagonal(model, batches, names: list[str]) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the answer NLL per trainable parameter, over `batches` (dicts of tensors)."""
    from tqdm.auto import tqdm

    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the deterministic model
    device = next(model.parameters()).device
    count = 0
    for batch in tqdm(batches, desc="Fisher", unit="batch", disable=len(batches) < 4):
        model.zero_grad(set_to_none=True)
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
        out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"])
        out.loss.backward()
        for n in names:
            if params[n].grad is not None:
                fisher[n] += params[n].grad.detach().float() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if count == 0:
        raise ValueError("no batches to estimate the Fisher information on")
    mean = torch.cat([f.flatten() for f in fisher.values()]).mean() / count
    return {n: f / count / mean.clamp(min=1e-30) for n, f in fisher.items()}


class Penalty:
    """sum_i F_i (theta_i - theta*_i)^2 over the anchored parameters (lambda applied by the caller), as one expression
    over the parameters flattened together: a handful of kernels per step instead of ~5 per LoRA matrix (~2,000 for
    SmolLM2-135M with LoRA on every linear layer), which is what an eager step on a GPU spends its time launching.
    Anchor and Fisher are flattened once, per device."""

    def __init__(self, anchor: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor]):
        groups: dict[torch.device, list[str]] = {}
        for n, f in fisher.items():
            groups.setdefault(f.device, []).append(n)
        self.groups = [(names, torch.cat([fisher[n].reshape(-1) for n in names]),
                        torch.cat([anchor[n].detach().reshape(-1).to(fisher[n]) for n in names]))
                       for names in groups.values()]

    def __call__(self, model) -> torch.Tensor:
        params = dict(model.named_parameters())
        total = torch.zeros((), device=next(model.parameters()).device)
        for names, f, a in self.groups:
            flat = torch.cat([params[n].reshape(-1) for n in names])
            total = total + (f * (flat - a).pow(2)).sum().to(total.device)
        return total


def penalty(model, anchor: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_i F_i (theta_i - theta*_i)^2 over the anchored parameters (lambda applied by the caller)."""
    return Penalty(anchor, fisher)(model)


def save(path: Path, fisher: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().float().cpu().contiguous() for k, v in fisher.items()}, str(tmp))
    tmp.replace(path)


def load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
