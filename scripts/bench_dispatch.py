"""The fixed cost of one forward + backward pass: the base model + LoRA on every linear layer, timed at tiny and at
training-sized batches. The time at 1 x 4 tokens is what a pass costs before any arithmetic (launching and
dispatching a few thousand small ops); it is what joining the distillation batch to the training micro-batch and
flattening the EWC penalty save per pass. Not a test: a table for docs/BENCHMARKS.md.

    .venv/bin/python scripts/bench_dispatch.py [--repeats 4]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--shapes", default="1x4,1x8,8x60,16x60", help="batch x tokens, comma-separated")
    ap.add_argument("--compile", action="store_true", help="torch.compile(dynamic=True) the model first")
    args = ap.parse_args()
    from peft import LoraConfig, get_peft_model

    from injector.config import load_config
    from injector.home import Home
    from injector.models import load_base, resolve_base
    from injector.train import _lora_targets

    cfg = load_config(None)
    lora = cfg.train.lora  # the adapter every night trains
    base = resolve_base(cfg.model.base, Home.from_env().ensure().models)
    model = load_base(base)
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             **_lora_targets(model, lora.target_modules, lora.top_layers)))
    model.train()
    if args.compile:
        model = torch.compile(model, dynamic=True)
    device = next(model.parameters()).device
    print(f"{base.name} + LoRA r={lora.r} ({lora.target_modules}, dropout {lora.dropout}) on {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| batch x tokens | s per forward + backward |\n|---|---|")
    for shape in args.shapes.split(","):
        b, t = (int(x) for x in shape.split("x"))
        x = torch.randint(0, 1000, (b, t), device=device)
        t_first = time.perf_counter()
        for i in range(args.repeats + 1):
            if i == 1:  # the first pass warms up
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            model(input_ids=x, labels=x).loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"| {b} x {t} | {(time.perf_counter() - t0) / args.repeats:.3f} | first {t0 - t_first:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
