"""Training stage: LoRA SFT with TRL's SFTTrainer (loss on answers only), early stopping on a dev split.

The only module that imports trl/peft training machinery. Takes InstructionPairs, returns a TrainResult.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from injector.config import TrainConfig
from injector.errors import InjectorError
from injector.records import InstructionPair, TrainResult

MetricSink = Callable[[dict[str, float], int], None]


class NonFiniteLoss(InjectorError):
    """Training produced NaN/inf; nothing is registered."""


def resolve_precision(choice: str) -> str:
    """bf16 only where matmuls are fast in bf16: CUDA with bf16, or a CPU with AVX512-BF16/AMX.

    On an AVX2-only CPU bf16 matmul is ~150x slower than fp32 (measured: 1 vs 160 GFLOP/s).
    """
    import torch

    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def to_records(pairs: list[InstructionPair]) -> list[dict]:
    """Conversational prompt/completion records: TRL computes the loss on the completion only."""
    return [
        {"prompt": list(p.messages[:-1]), "completion": [p.messages[-1]],
         "fact_id": p.fact_id, "kind": p.kind, "template_id": p.template_id, "origin": p.origin}
        for p in pairs
    ]


def _callbacks(sink: MetricSink | None, patience: int, has_dev: bool):
    from transformers import EarlyStoppingCallback, TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        """The progress bar without a printed dict per logging step (metrics go to MLflow)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

    class Guard(TrainerCallback):
        """Stops on the first non-finite loss or grad norm (the HF logger would only print nan)."""

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            for key in ("loss", "grad_norm", "eval_loss"):
                if key in logs and not math.isfinite(float(logs[key])):
                    raise NonFiniteLoss(f"training stopped: {key} is {logs[key]} at step {state.global_step}"
                                        " (lower train.learning_rate, or check the data); nothing was registered")
            if sink is not None:
                sink({k: float(v) for k, v in logs.items() if isinstance(v, int | float)}, state.global_step)

    cbs = [Guard(), QuietProgress()]
    if has_dev and patience > 0:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=patience))
    return cbs


def train_lora(
    pairs: list[InstructionPair],
    base_path: str,
    out_dir: Path,
    cfg: TrainConfig,
    init_adapter: str | None = None,
    sink: MetricSink | None = None,
    quantization: str = "none",
) -> TrainResult:
    """Fine-tune a LoRA adapter on `pairs` (kind "dev" pairs are the early-stopping split)."""
    import datasets
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from trl import SFTConfig, SFTTrainer

    from injector.models import load_base, load_tokenizer

    train_pairs = [p for p in pairs if p.kind != "dev"]
    dev_pairs = [p for p in pairs if p.kind == "dev"] if cfg.dev_fraction > 0 else []
    if not train_pairs:
        raise InjectorError("no training pairs: every fact was rejected or the recipes produced nothing")
    from injector.models import BaseModelRef

    tokenizer = load_tokenizer(base_path)
    tokenizer.padding_side = "right"  # training pads right; generation pads left
    model = load_base(BaseModelRef(name=base_path, path=base_path, sha256=""), quantization)
    if init_adapter:
        model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    else:
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM",
        ))
    precision = resolve_precision(cfg.precision)
    ckpt_dir = out_dir / "checkpoints"
    has_dev = bool(dev_pairs)
    args = SFTConfig(
        output_dir=str(ckpt_dir),
        seed=cfg.seed,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        max_length=cfg.max_length,
        packing=False,
        padding_free=False,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length",  # less padding: batches of similar length
        eval_strategy="epoch" if has_dev else "no",
        save_strategy="epoch",  # checkpoint saves dominate on CPU: once per epoch (STACK.md)
        save_total_limit=2,
        load_best_model_at_end=has_dev,
        metric_for_best_model="eval_loss" if has_dev else None,
        greater_is_better=False if has_dev else None,
        logging_steps=1,
        logging_first_step=True,
        report_to="none",
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=False,
    )
    train_ds = Dataset.from_list(to_records(train_pairs))
    dev_ds = Dataset.from_list(to_records(dev_pairs)) if has_dev else None
    datasets.disable_progress_bars()  # tokenising a few hundred pairs needs no bars
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                         processing_class=tokenizer, callbacks=_callbacks(sink, cfg.patience, has_dev))
    from transformers.trainer_callback import ProgressCallback

    for cb in list(trainer.callback_handler.callbacks):  # the default bar, replaced by QuietProgress
        if type(cb) is ProgressCallback:
            trainer.remove_callback(cb)
    n_tokens = sum(sum(m) for m in trainer.train_dataset["attention_mask"]) if "attention_mask" in \
        trainer.train_dataset.column_names else sum(len(x) for x in trainer.train_dataset["input_ids"])
    start = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - start
    epochs_done = float(trainer.state.epoch or cfg.epochs)
    adapter_dir = out_dir / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)
    trainer.model.save_pretrained(str(adapter_dir))
    history = trainer.state.log_history
    best = trainer.state.best_metric
    return TrainResult(
        adapter_dir=str(adapter_dir),
        steps=trainer.state.global_step,
        epochs=epochs_done,
        train_loss=float(output.training_loss),
        best_eval_loss=float(best) if best is not None else None,
        tokens_per_s=n_tokens * epochs_done / wall if wall > 0 else 0.0,
        wall_s=wall,
        n_examples=len(train_pairs),
        loss_history=tuple((h["step"], float(h["loss"])) for h in history if "loss" in h),
        eval_history=tuple((h["step"], float(h["eval_loss"])) for h in history if "eval_loss" in h),
        stopped_early=has_dev and epochs_done < cfg.epochs - 1e-6,
    )
