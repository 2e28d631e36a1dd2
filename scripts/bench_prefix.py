"""What computing a batch's common prompt prefix once saves (injector/prefix.py): forward + backward of the demo's
training pairs (answer logits kept, as the trainer keeps them) and of answer-start prompts, with every row
computing its own prefix and with the prefix shared, interleaved repeat by repeat. Not a test: a table for
docs/BENCHMARKS.md.

    .venv/bin/python scripts/bench_prefix.py [--repeats 3] [--batches 8,16]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="8,16", help="rows per pass, comma-separated")
    args = ap.parse_args()
    from peft import LoraConfig, get_peft_model

    from injector import prefix
    from injector.config import load_config
    from injector.home import Home
    from injector.ingest import read_batch
    from injector.models import load_base, load_tokenizer, resolve_base
    from injector.pipeline import _general_prompts
    from injector.recipes import build_pairs, load_recipes
    from injector.records import FactChange
    from injector.train import _chat_ids, _lora_targets, _packed_row, supervised

    cfg = load_config(None)
    lora = cfg.train.lora
    base = resolve_base(cfg.model.base, Home.from_env().ensure().models)
    tok = load_tokenizer(base.path)
    model = load_base(base)
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             **_lora_targets(model, lora.target_modules, lora.top_layers)))
    model.train()
    facts = [FactChange(t) for t in read_batch([ROOT / "examples" / "triples.jsonl"], mode="delta").triples]
    pairs = [p for p in build_pairs(facts, load_recipes(ROOT / "data_recipes")) if p.kind != "dev"]
    train_rows = [_packed_row(tok, [p]) for p in supervised(pairs, cfg.train)]
    random.Random(0).shuffle(train_rows)  # the trainer's batches are shuffled, not length-grouped
    starts = [_chat_ids(tok, [{"role": "user", "content": q}], prompt=True)
              for _, q in _general_prompts(cfg, knowledge=False)]
    pad = tok.pad_token_id or 0

    def batch(rows, answers: bool):
        width = max(len(r["input_ids"] if answers else r) for r in rows)
        ids = torch.full((len(rows), width), pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        keep = torch.zeros((len(rows), width), dtype=torch.bool)
        for j, r in enumerate(rows):
            x = r["input_ids"] if answers else r
            ids[j, : len(x)], mask[j, : len(x)] = torch.tensor(x), 1
            if answers:  # position t keeps the logits that predict answer token t + 1
                keep[j, : len(x) - 1] = torch.tensor(r["completion_mask"][1:]).bool()
            else:
                keep[j, len(x) - 1] = True
        return ids, mask, keep

    def timed(b, min_saved) -> float:
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        prefix.logits(model, *b, min_saved).float().logsumexp(-1).mean().backward()
        return time.perf_counter() - t0

    print(f"{base.name} + LoRA r={lora.r} ({lora.target_modules}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {args.repeats} repeats, median s per forward + backward")
    print("| rows | what | positions | shared prefix | own prefix s | shared s | shared / own |\n"
          "|---|---|---|---|---|---|---|")
    for size in (int(x) for x in args.batches.split(",")):
        for what, rows, answers in (("training pairs", train_rows, True), ("answer starts", starts, False)):
            b = batch(rows[:size], answers)
            n = prefix.common_prefix(*b)
            timed(b, None)  # warm-up
            own, shared = [], []
            for _ in range(args.repeats):
                own.append(timed(b, None))
                shared.append(timed(b, 1))
            o, s = statistics.median(own), statistics.median(shared)
            print(f"| {size} | {what} | {int(b[1].sum())} | {n} x {size - 1} | {o:.3f} | {s:.3f} | {s / o:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
