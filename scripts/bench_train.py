"""Training throughput on this machine: injector's trainer vs a plain PyTorch loop over the same batches.

Prints tokens/s (non-pad tokens), wall time, and the share of non-pad tokens, for SmolLM2-135M + LoRA r=16 on
all linear layers, fp32 and bf16 (autocast). Not a test: a table for docs/BENCHMARKS.md.

    .venv/bin/python scripts/bench_train.py [--steps 8] [--batch 16]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from injector.config import load_config
from injector.home import Home
from injector.ingest import read_batch
from injector.models import resolve_base
from injector.recipes import build_pairs, load_recipes
from injector.records import FactChange
from injector.train import resolve_precision, to_records, train_lora

ROOT = Path(__file__).resolve().parent.parent


def batches(pairs, tokenizer, batch: int, grouped: bool, seed: int = 0):
    """Tokenise like TRL (chat template, answer-only labels) and pad right, like the trainer's collator."""
    rows = []
    for r in to_records(pairs):
        prompt = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True)
        full = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True)
        prompt, full = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt), \
            list(full["input_ids"] if hasattr(full, "keys") else full)
        rows.append((full, [-100] * len(prompt) + full[len(prompt):]))
    rng = random.Random(seed)
    rng.shuffle(rows)
    if grouped:  # like the trainer's length-grouped sampler: similar lengths share a batch
        rows.sort(key=lambda r: len(r[0]))
    out = []
    for i in range(0, len(rows) - batch + 1, batch):
        chunk = rows[i: i + batch]
        width = max(len(r[0]) for r in chunk)
        ids = torch.full((batch, width), tokenizer.pad_token_id)
        lab = torch.full((batch, width), -100)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for j, (x, y) in enumerate(chunk):
            ids[j, : len(x)], lab[j, : len(y)], mask[j, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        out.append({"input_ids": ids, "labels": lab, "attention_mask": mask})
    return out


def plain_loop(base_path: str, data, precision: str, steps: int) -> tuple[float, float]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens, t0 = 0, None
    for i, b in enumerate(data[: steps + 1]):
        if i == 1:
            t0 = time.perf_counter()  # first step warms up
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= 1:
            tokens += int(b["attention_mask"].sum())
    wall = time.perf_counter() - t0
    return tokens / wall, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bf16-steps", type=int, default=1, help="bf16 is ~150x slower without AVX512-BF16")
    args = ap.parse_args()
    home = Home.from_env().ensure()
    cfg = load_config(ROOT / "examples" / "demo.yaml")
    base = resolve_base(cfg.model.base, home.models)
    recipes = load_recipes(ROOT / "data_recipes")
    facts = [FactChange(t) for t in read_batch([ROOT / "examples" / "triples.jsonl"], mode="delta").triples]
    pairs = [p for p in build_pairs(facts, recipes) if p.kind != "dev"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base.path)
    grouped, shuffled = batches(pairs, tok, args.batch, True), batches(pairs, tok, args.batch, False)
    share = lambda bs: sum(int(b["attention_mask"].sum()) for b in bs) / sum(b["input_ids"].numel() for b in bs)  # noqa: E731
    rows = []
    n_ex = args.batch * args.steps
    tcfg = load_config(None, ["train.epochs=1", f"train.batch_size={args.batch}", "train.grad_accum=1",
                              "train.dev_fraction=0", "train.patience=0", "train.precision=fp32"]).train
    sub = random.Random(0).sample(pairs, min(n_ex, len(pairs)))
    res = train_lora(sub, base.path, home.runs / "bench-train", tcfg)
    rows.append(("injector trainer (TRL, compact loss)", "fp32", res.tokens_per_s, res.wall_s))
    for precision, steps in (("fp32", args.steps), ("bf16", args.bf16_steps)):
        tps, wall = plain_loop(base.path, grouped, precision, steps)
        rows.append((f"plain PyTorch loop ({steps} steps)", precision, tps, wall))
    print(f"\nSmolLM2-135M + LoRA r=16 all-linear, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, auto precision here: {resolve_precision('auto')}")
    print(f"non-pad token share: length-grouped batches {share(grouped):.1%}, shuffled batches {share(shuffled):.1%}")
    print(f"| {'loop':<40} | precision | tokens/s | wall s |\n|{'-' * 42}|-----------|----------|--------|")
    for name, prec, tps, wall in rows:
        print(f"| {name:<40} | {prec:<9} | {tps:8.0f} | {wall:6.1f} |")


if __name__ == "__main__":
    main()
