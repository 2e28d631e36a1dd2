"""Training stage: LoRA SFT with TRL's SFTTrainer (loss on answers only), early stopping, EWC, resume.

The only module that imports trl. Takes InstructionPairs, returns a TrainResult.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from injector.config import TrainConfig
from injector.errors import InfraError, InjectorError
from injector.records import InstructionPair, TrainResult
from injector.timing import timed

MetricSink = Callable[[dict[str, float], int], None]
MARKER = "injector-complete.json"  # written last into a checkpoint dir: its presence means complete


class NonFiniteLoss(InjectorError):
    """Training produced NaN/inf; nothing is registered."""


@dataclass(frozen=True)
class EwcSpec:
    lam: float
    replay: tuple[InstructionPair, ...]  # Fisher estimation data
    cache: Path  # where the Fisher of this (model, replay) is cached
    max_examples: int = 64


def resolve_precision(choice: str) -> str:
    """bf16 only where training is fast in bf16: CUDA with bf16, or a CPU with AMX.

    On an AVX2-only CPU bf16 matmul is ~150x slower than fp32 (measured: 1 vs 160 GFLOP/s). On a 2-core Xeon with
    AVX512-BF16 but no AMX, bf16 autocast made a training pass 1.7x slower than fp32 (SmolLM2-135M + LoRA, 8 x 60
    tokens: 2.1 vs 1.25 s) and a 10-fact night's training 251 -> 130 s in fp32 (docs/BENCHMARKS.md, stop 37). With
    fp32 weights asked for (`INJECTOR_DTYPE=float32`, `models.weights_dtype`), auto is fp32 on any device.
    """
    import torch

    if choice != "auto":
        return choice
    from injector.models import chosen_dtype

    if chosen_dtype() == "float32":  # fp32 weights asked for: fp32 compute
        return "fp32"
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if "amx_bf16" in flags else "fp32"


def to_records(pairs: list[InstructionPair]) -> list[dict]:
    """Conversational prompt/completion records: TRL computes the loss on the completion only."""
    return [
        {"prompt": list(p.messages[:-1]), "completion": [p.messages[-1]],
         "fact_id": p.fact_id, "kind": p.kind, "template_id": p.template_id, "origin": p.origin}
        for p in pairs
    ]


def _chat_ids(tokenizer, messages: list[dict], prompt: bool = False) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _packed_row(tokenizer, group: list[InstructionPair]) -> dict | None:
    """One conversation made of the pairs' turns, the loss on each pair's answer; None where the chat template does
    not render a conversation as the concatenation of its turns (then the pairs are not packed)."""
    msgs = [m for p in group for m in p.messages]
    ids = _chat_ids(tokenizer, msgs)
    mask = [0] * len(ids)
    end = 0
    for p in group:
        end += len(p.messages)
        prompt = _chat_ids(tokenizer, msgs[: end - 1], prompt=True)
        upto = len(_chat_ids(tokenizer, msgs[:end])) if end < len(msgs) else len(ids)
        if len(group) > 1 and (ids[: len(prompt)] != prompt or upto < len(prompt)):
            return None  # (a single pair is masked the way TRL masks a prompt/completion pair)
        mask[len(prompt): upto] = [1] * (upto - len(prompt))
    return {"input_ids": ids, "completion_mask": mask}


def pack_rows(pairs: list[InstructionPair], tokenizer, pack: int, max_tokens: int, seed: int = 0) -> list[dict]:
    """Pairs as multi-turn conversations of up to `pack` pairs (of different facts) and `max_tokens` tokens, the loss
    on every answer: the chat template's prefix (SmolLM2's default system prompt is 16 of a pair's ~56 tokens) is
    paid once per conversation instead of once per pair. The first pair of each conversation is asked exactly as a
    user asks it; the others follow earlier, unrelated turns. Deterministic by seed."""
    import random

    order = list(pairs)
    random.Random(seed).shuffle(order)
    groups: list[list[InstructionPair]] = []
    for p in order:  # first group with room and no pair of the same fact (an answer must not be copied from context)
        home = next((g for g in groups[-pack:] if len(g) < pack
                     and not (p.fact_id and any(q.fact_id == p.fact_id for q in g))), None)
        if home is None:
            groups.append([p])
        else:
            home.append(p)
    rows = []
    for group in groups:
        row = _packed_row(tokenizer, group) if len(group) > 1 else None
        if row is not None and len(row["input_ids"]) <= max_tokens:
            rows.append(row)
        else:  # too long, or a template that does not concatenate: one conversation per pair
            rows += [_packed_row(tokenizer, [p]) for p in group]
    return rows


def fingerprint(pairs: list[InstructionPair], base_sha: str, cfg: TrainConfig, init: str | None) -> dict[str, str]:
    """What a resumed run must share with the interrupted one."""
    data = hashlib.sha256(json.dumps([[p.messages, p.kind, p.origin] for p in pairs]).encode()).hexdigest()
    conf = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()
    return {"data": data[:16], "base": base_sha[:16], "config": conf[:16], "init": init or "base"}


def _trainer_class():
    import torch
    from trl import SFTTrainer

    from injector import distill, prefix

    class InjectorTrainer(SFTTrainer):
        """SFTTrainer with a compact answer-only loss and an EWC penalty.

        The LM head is applied to answer positions only (TRL scores every position on CPU): +20% tokens/s
        measured on SmolLM2-135M. The backbone and the head are the model's own modules.
        """

        ewc_lambda: float = 0.0
        ewc_penalty = None  # ewc.Penalty: the anchor and the Fisher, flattened
        last_ewc = 0.0
        distill = None  # distill.Cycler of teacher batches
        distill_weight: float = 0.0
        distill_every = "micro_batch"
        last_kd = 0.0
        start = None  # distill.Cycler of answer-start batches (train.start_kd)
        start_weight = 0.0  # its weight, a share of distill_weight (train.start_weight)
        learned = None  # curriculum.LearnedFacts (train.drop_learned)
        entities: dict | None = None  # entity_index: the night's entities' token ids (train.entity_weight)
        entity_weight = 1.0
        learned_ignore = None  # token ids an answer need not reproduce (tensor)
        shared_prefix: int | None = None  # train.shared_prefix_min_tokens where it applies (a CPU, one process)
        flat = False  # train.flat_batches where it applies (a CPU, one process)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # through the (possibly DDP-wrapped) model's own forward, so that DDP arms its gradient all-reduce and
            # model-specific logit processing (soft-capping, scaling) applies; `logits_to_keep` as a boolean mask
            # applies the LM head to answer positions only (+20% tokens/s on CPU, measured on SmolLM2-135M)
            inputs, row_keys, share = self._without_learned(inputs, model.training)
            labels = inputs["labels"]
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = labels[:, 1:] != -100
            once = self.distill_every == "step" and num_items_in_batch is not None
            teacher = None
            if self.distill is not None and self.distill_weight > 0 and model.training and \
                    (not once or self.accelerator.sync_gradients):
                # every micro-batch (weight / accumulation steps), or once per optimizer step at its last micro-batch
                # (train.distill_every)
                teacher = self.distill.next()
            # the answer starts once per optimizer step, at its last micro-batch (a batch of start_kd x grad_accum
            # prompts, `_starts`): the parameters do not move between micro-batches, so this is the gradient of a
            # batch at each, for one pass a step instead of grad_accum (each prompt is one position: the same mean)
            start = self.start.next() if self.start is not None and model.training and \
                self.accelerator.sync_gradients else None
            ids, mask, kept = inputs["input_ids"], inputs.get("attention_mask"), keep
            # the replay text (and the answer starts) ride in the training micro-batch's forward/backward pass: on an
            # accelerator, bound by launching kernels, as rows of one padded batch; on a CPU, bound by arithmetic,
            # where padding rows to a common width cost 1.4-1.7x the separate passes, end to end in one padding-free
            # row (train.flat_batches; docs/BENCHMARKS.md)
            riders = [b for b in (teacher, start) if b is not None] if mask is not None else []
            tails = {}
            if self.flat and mask is not None:  # a CPU, one process (train_lora): rows end to end, no padding, one pass
                parts = prefix.flat_logits(model, [(ids, mask, kept)] + [
                    (b.input_ids, b.attention_mask, distill.positions(b)) for b in riders], self.shared_prefix)
                logits, tails = parts[0].float(), {id(b): t for b, t in zip(riders, parts[1:], strict=True)}
            else:
                riders = riders if ids.device.type != "cpu" else []
                for b in riders:
                    ids, mask, kept = distill.joined(ids, mask, kept, b, self.processing_class.pad_token_id or 0)
                # shared_prefix is set on a CPU only, where nothing rides (train_lora)
                logits = prefix.logits(model, ids, mask, kept, self.shared_prefix).float()
                for b in reversed(riders):  # their positions come last, in order (a host-side shape: no sync)
                    n = b.idx.shape[0]
                    logits, tails[id(b)] = logits[:-n], logits[-n:]
            targets = labels[:, 1:][keep[:, :-1]]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, reduction="none")
            if self.entities:  # train.entity_weight
                nll = nll * entity_weights(inputs["input_ids"], labels, self.entities, self.entity_weight).to(nll)
            nll = nll.sum()
            if row_keys is not None:
                self._observe(logits.detach(), targets, keep.sum(1).tolist(), row_keys)
            # with learned rows skipped, the micro-batch's answer tokens are a share of what the Trainer counted
            n = num_items_in_batch * share if num_items_in_batch is not None else keep.sum().clamp(min=1)
            loss = nll / n
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # n counts the answer tokens of every rank, and DDP averages gradients over ranks: undo the average
                # for this term only (EWC is the same on every rank; KD is a per-rank mean: both averaged as is)
                loss = loss * self.accelerator.num_processes
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            if self.ewc_lambda > 0 and self.ewc_penalty is not None and model.training and \
                    self.accelerator.sync_gradients:
                # once per optimizer step, at its last micro-batch: the parameters do not move between micro-batches,
                # so this is the gradient of `steps` terms of pen / steps, for a 1/steps of the kernels
                pen = self.ewc_penalty(self.accelerator.unwrap_model(model))
                self.last_ewc = pen.detach()  # a tensor: read at logging time, no host sync per step
                loss = loss + self.ewc_lambda * pen
            for b, weight in ((teacher, self.distill_weight / (1 if once else steps)),
                              (start, self.distill_weight * self.start_weight)):
                if b is None:
                    continue
                kd = distill.kd_from_logits(tails[id(b)], b) if id(b) in tails else \
                    distill.kd_loss(self.accelerator.unwrap_model(model), b, self.shared_prefix)
                if b is teacher:
                    self.last_kd = kd.detach()
                loss = loss + weight * kd
            return (loss, None) if return_outputs else loss

        def _without_learned(self, inputs, training: bool):
            """The micro-batch without the rows of facts already learned (train.drop_learned): (inputs, the kept
            rows' keys or None, kept share of the answer tokens)."""
            if self.learned is None or not training:
                return inputs, None, 1.0
            mask = inputs["attention_mask"]
            keys = [tuple(ids[:n]) for ids, n in zip(inputs["input_ids"].tolist(), mask.sum(1).tolist())]
            rows = [i for i, k in enumerate(keys) if not self.learned.skip(k)] or [0]
            self.learned.skipped += len(keys) - len(rows)
            self.learned.trained += len(rows)
            if len(rows) == len(keys):
                return inputs, keys, 1.0
            answers = (inputs["labels"] != -100).sum(1)
            share = float(answers[rows].sum()) / max(1, float(answers.sum()))
            idx = torch.tensor(rows, device=mask.device)
            self.learned.tokens_skipped += int(mask.sum() - mask[idx].sum())
            width = int(mask[idx].sum(1).max())  # the kept rows' padding only
            kept = {k: v[idx, :width] if torch.is_tensor(v) and v.dim() == 2 else v for k, v in inputs.items()}
            return kept, [keys[i] for i in rows], share

        def _observe(self, logits, targets, counts: list[int], keys: list) -> None:
            """Each row's answer reproduced greedily (every answer token the argmax; trailing end-of-turn and
            whitespace tokens aside)?"""
            ok = (logits.argmax(-1) == targets) | torch.isin(targets, self.learned_ignore.to(targets.device))
            for key, row_ok in zip(keys, ok.split(counts), strict=True):
                self.learned.observe(key, bool(row_ok.all()) if len(row_ok) else False)

        def log(self, logs, *args, **kwargs):
            if self.learned is not None and "loss" in logs:
                logs["learned_facts"] = len(self.learned.learned)
                logs["skipped_share"] = self.learned.skipped_share
            if self.ewc_lambda > 0 and "loss" in logs:
                logs["ewc_penalty"] = float(self.last_ewc)
            if self.distill is not None and "loss" in logs:
                logs["kd"] = float(self.last_kd)
            super().log(logs, *args, **kwargs)

    return InjectorTrainer


def _callbacks(sink: MetricSink | None, patience: int, has_dev: bool, marker: dict):
    from transformers import EarlyStoppingCallback, TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        """The progress bar without a printed dict per logging step (metrics go to MLflow)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

    class Guard(TrainerCallback):
        """Stops on the first non-finite loss or grad norm (the HF logger would only print nan); adds tokens/s."""

        def __init__(self):
            self.t = time.perf_counter()
            self.tokens = 0

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            for key in ("loss", "grad_norm", "eval_loss"):
                if key in logs and not math.isfinite(float(logs[key])):
                    raise NonFiniteLoss(f"training stopped: {key} is {logs[key]} at step {state.global_step}"
                                        " (lower train.learning_rate, or check the data); nothing was registered")
            if "num_input_tokens_seen" in logs or state.num_input_tokens_seen:
                now, seen = time.perf_counter(), state.num_input_tokens_seen
                if now > self.t and seen > self.tokens:
                    logs["tokens_per_s"] = (seen - self.tokens) / (now - self.t)
                self.t, self.tokens = now, seen
            if sink is not None:
                sink({k: float(v) for k, v in logs.items() if isinstance(v, int | float)}, state.global_step)

    class Completed(TrainerCallback):
        """Marks a checkpoint complete once everything in it is written (resume ignores unmarked ones)."""

        def on_save(self, args, state, control, **kw):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and ckpt.is_dir():  # one writer when several processes train
                tmp = ckpt / (MARKER + ".tmp")
                tmp.write_text(json.dumps({**marker, "step": state.global_step, "epoch": state.epoch}))
                tmp.replace(ckpt / MARKER)
                done = len(list(Path(args.output_dir).glob(f"checkpoint-*/{MARKER}")))
                if str(done) == os.environ.get("INJECTOR_FAULT_KILL_AFTER_CHECKPOINTS"):
                    os.kill(os.getpid(), signal.SIGKILL)  # crash-safety tests only

    cbs = [Guard(), QuietProgress(), Completed()]
    if has_dev and patience > 0:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=patience))
    return cbs


def last_complete_checkpoint(ckpt_dir: Path, marker: dict) -> Path | None:
    """The newest checkpoint with a completeness marker; refuses one made for other data/base/config."""
    done = sorted((p for p in ckpt_dir.glob("checkpoint-*") if (p / MARKER).exists()),
                  key=lambda p: int(p.name.split("-")[1]))
    if not done:
        return None
    saved = json.loads((done[-1] / MARKER).read_text())
    for key in ("data", "base", "config", "init"):
        if saved.get(key) != marker[key]:
            raise InjectorError(f"cannot resume from {done[-1]}: its {key} hash {saved.get(key)} differs from this "
                                f"run's {marker[key]} (the data, base model or config changed); run without --resume")
    return done[-1]


def supervised(pairs: list[InstructionPair], cfg: TrainConfig) -> list[InstructionPair]:
    """The pairs trained with hard labels. Self-distilled replay (`train.kd_only`: general instructions, anchors,
    the subjects' other relations) is the model's own greedy answer: with distillation on, its whole next-token
    distribution on the same text is the target, and hard labels would only sharpen the argmax, hallucinations
    included, at the cost of the longest sequences of the mix. Without distillation every pair keeps hard labels."""
    kinds = cfg.kd_kinds
    kept = [p for p in pairs if p.kind not in kinds]
    return kept or list(pairs)  # a mix of replay alone: hard labels rather than nothing to step on


def entity_index(pairs: list[InstructionPair], tokenizer) -> dict[int, list[tuple[int, ...]]]:
    """The token ids of the entities that the pairs' sentence answers state (`InstructionPair.short`), in both
    spellings a tokenizer gives them (after a space, and first), keyed by their first token; empty where every
    question is answered in short form."""
    index: dict[int, set[tuple[int, ...]]] = {}
    for text in {p.short for p in pairs if p.short}:
        for form in (f" {text}", text):
            ids = tuple(tokenizer(form, add_special_tokens=False)["input_ids"])
            if ids:
                index.setdefault(ids[0], set()).add(ids)
    return {k: sorted(v, key=len, reverse=True) for k, v in index.items()}


def entity_weights(input_ids, labels, index: dict[int, list[tuple[int, ...]]], weight: float):
    """A loss weight per answer token, in the order of the answer-only loss (`labels[:, 1:] != -100`): `weight` on
    the tokens of an entity of `index` (entity_index) where an answer states it and its question does not name it
    (the object of a forward question, the subject of a reverse one; not a subject the sentence restates), 1
    elsewhere."""
    import torch

    def find(seq: tuple[int, ...], ids: list[int]) -> int:
        return next((i for i in range(len(ids) - len(seq) + 1) if tuple(ids[i: i + len(seq)]) == seq), -1)

    out: list[float] = []
    for ids, lab in zip(input_ids.tolist(), labels.tolist(), strict=True):
        answer = [t for t in lab[1:] if t != -100]
        prompt = [t for t, y in zip(ids, lab, strict=True) if y == -100]
        w = [1.0] * len(answer)
        for i, t in enumerate(answer):
            for seq in index.get(t, ()):
                if tuple(answer[i: i + len(seq)]) == seq and find(seq, prompt) < 0:
                    w[i: i + len(seq)] = [weight] * len(seq)
                    break
        out += w
    return torch.tensor(out)


def lora_layers(top: float, n_layers: int) -> list[int] | None:
    """The decoder layers that get adapters: the top `top` share of `n_layers` (at least one); None for all."""
    if top >= 1:
        return None
    k = max(1, round(top * n_layers))
    return list(range(n_layers - k, n_layers))


def _lora_targets(model, target_modules, top: float) -> dict:
    """PEFT's target arguments; with `top` < 1 the modules are named (PEFT takes no layer list with "all-linear")."""
    layers = lora_layers(top, model.config.num_hidden_layers)
    if layers is None:
        return {"target_modules": target_modules}
    if target_modules == "all-linear":  # PEFT's meaning: every linear layer but the output head
        import torch

        head = model.get_output_embeddings()
        target_modules = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                                 if isinstance(m, torch.nn.Linear) and m is not head})
    elif isinstance(target_modules, str):
        target_modules = [target_modules]
    return {"target_modules": list(target_modules), "layers_to_transform": layers}


def learned_facts(pairs: list[InstructionPair], tokenizer):
    """Tonight's fact pairs, keyed by their training token ids (a row's ids identify its pair), the fact's first
    phrasing first (its sentinel once learned)."""
    from injector.curriculum import LearnedFacts

    by_fact: dict[str, list[tuple[int, ...]]] = {}
    for p in pairs:
        if p.origin == "new" and p.fact_id:
            by_fact.setdefault(p.fact_id, []).append(tuple(_chat_ids(tokenizer, list(p.messages))))
    tokens = {t for keys in by_fact.values() for k in keys for t in k}
    ignore = frozenset(t for t in tokens if t in tokenizer.all_special_ids or not tokenizer.decode([t]).strip())
    return LearnedFacts(by_fact, ignore=ignore)


def sequences_per_batch(cfg: TrainConfig) -> int:
    """Training conversations per micro-batch: `batch_size` pairs, packed `pack` to a conversation."""
    return max(1, math.ceil(cfg.batch_size / cfg.pack))


def planned_step(cfg: TrainConfig, n_train: int, world_size: int = 1) -> tuple[int, int]:
    """(batch_size, grad_accum): the config's, or on a night whose `cfg.epochs` passes give fewer than `cfg.min_steps`
    optimizer steps, the largest step (pairs per micro-batch x micro-batches, each at most the config's) whose
    `epochs` passes still reach the floor. The floor's steps then take `epochs` passes over the data instead of more
    passes at full-size steps (a 10-fact night: ~5 pairs a step, 5 passes, instead of 16 a step over 12 passes).
    The floor is `min_steps / max_lr_scale`, as in `planned_epochs`. Ties go to fewer micro-batches."""
    floor = cfg.min_steps / cfg.max_lr_scale  # the rest made up by the rate (planned_learning_rate)
    if not floor or not n_train or _steps_per_epoch(cfg, n_train, world_size) * cfg.epochs >= floor:
        return cfg.batch_size, cfg.grad_accum
    best = 1, 1
    for accum in range(1, cfg.grad_accum + 1):
        for batch in range(1, cfg.batch_size + 1):
            c = cfg.model_copy(update={"batch_size": batch, "grad_accum": accum})
            if _steps_per_epoch(c, n_train, world_size) * cfg.epochs >= floor and batch * accum > best[0] * best[1]:
                best = batch, accum
    return best


def one_pass_step(cfg: TrainConfig, accelerator: bool) -> TrainConfig:
    """On an accelerator (with `cfg.one_pass_on_accelerator`), an optimizer step's micro-batches as one: batch_size x
    grad_accum pairs, distill_batch_size x grad_accum replay sequences and start_kd x grad_accum answer starts in one
    pass. The step's data and loss are the same (the answer loss is a sum over the step's answer tokens divided by
    their count, EWC once a step), but for KD's mean: over the step's replay positions, not the micro-batches' means
    averaged. The kernels launched are a grad_accum-th."""
    if not (accelerator and cfg.one_pass_on_accelerator) or cfg.grad_accum == 1:
        return cfg
    return cfg.model_copy(update={"batch_size": cfg.batch_size * cfg.grad_accum, "grad_accum": 1,
                                  "distill_batch_size": cfg.distill_batch_size * cfg.grad_accum,
                                  "start_kd": cfg.start_kd * cfg.grad_accum})


def night_step(cfg: TrainConfig, n_pairs: int, world_size: int = 1) -> tuple[int, int]:
    """(batch_size, grad_accum) of a night of `n_pairs` training pairs: `planned_step` with `cfg.shrink_steps`,
    else the config's."""
    if not cfg.shrink_steps:
        return cfg.batch_size, cfg.grad_accum
    return planned_step(cfg, math.ceil(n_pairs / cfg.pack), world_size)


def planned_epochs(cfg: TrainConfig, n_train: int, world_size: int = 1, nearest: bool = False) -> int:
    """`cfg.epochs`, or more where that gives fewer than the step floor (`n_train`: training conversations): the
    floor is `cfg.min_steps`, or `min_steps / max_lr_scale` where the learning rate makes up the rest
    (`planned_learning_rate`). `nearest`: the passes were already planned for the floor (fresh replay, whose new
    pairs repeat k times a pass): the whole passes nearest to it, not one more for a few steps short (a pass of a
    k-times mix is k times longer)."""
    per_epoch = _steps_per_epoch(cfg, n_train, world_size)
    if not cfg.min_steps or not per_epoch:
        return cfg.epochs
    need = cfg.min_steps / cfg.max_lr_scale / per_epoch
    return max(cfg.epochs, max(1, round(need)) if nearest else math.ceil(need))


def planned_steps(cfg: TrainConfig, n_train: int, world_size: int = 1, epochs: int | None = None,
                  nearest: bool = False) -> int:
    """The optimizer steps a training of `n_train` conversations takes: `planned_epochs` (from `epochs` passes, or
    `cfg.epochs`) x the steps of one pass."""
    c = cfg.model_copy(update={"epochs": epochs}) if epochs else cfg
    return planned_epochs(c, n_train, world_size, nearest) * _steps_per_epoch(c, n_train, world_size)


def replay_rotations(cfg: TrainConfig, n_pairs: int, world_size: int = 1, most: int | None = None) -> tuple[int, int]:
    """(k, passes): how many replay sets a night of `n_pairs` training pairs (new + replay at the mix) draws, and
    its passes over them. A night short of the step floor would pass over the same pairs `planned_epochs` (P) times;
    instead its replay pool is k = P / `most` times larger (fresh prompts; `most`: the passes over one replay
    prompt, default `epochs`) and its new pairs repeat k times a pass, for P / k passes: the optimizer steps and the
    passes over each new pair stay as they were while no replay prompt is trained more than ~`most` times. (1, P)
    where the night reaches the floor in `epochs` passes at the default (the rule changes nothing there)."""
    total = planned_epochs(cfg, math.ceil(n_pairs / cfg.pack), world_size)
    k = max(1, round(total / (most or cfg.epochs)))
    return k, max(1, round(total / k))


def planned_learning_rate(cfg: TrainConfig, n_train: int, world_size: int = 1) -> float:
    """`cfg.learning_rate`, raised (at most `max_lr_scale` times) on a night of fewer than `cfg.min_steps` optimizer
    steps so that rate x steps, the distance Adam moves the adapter, matches what `min_steps` steps give."""
    steps = _steps_per_epoch(cfg, n_train, world_size) * planned_epochs(cfg, n_train, world_size)
    if not cfg.min_steps or not steps or steps >= cfg.min_steps:
        return cfg.learning_rate
    return cfg.learning_rate * min(cfg.max_lr_scale, cfg.min_steps / steps)


def _steps_per_epoch(cfg: TrainConfig, n_train: int, world_size: int, accum: int | None = None) -> int:
    """Optimizer steps per pass over `n_train` conversations (at `accum` micro-batches a step, or the config's)."""
    micro = math.ceil(n_train / (sequences_per_batch(cfg) * world_size))
    return math.ceil(micro / (accum or cfg.grad_accum)) if n_train else 0


def _sft_config(SFTConfig, cfg: TrainConfig, ckpt_dir: Path, precision: str, has_dev: bool):
    """Every SFTConfig default that matters, set explicitly (TRL's differ from transformers', STACK.md)."""
    import torch

    return SFTConfig(
        output_dir=str(ckpt_dir),
        seed=cfg.seed,
        data_seed=cfg.seed,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=sequences_per_batch(cfg),
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        max_length=cfg.max_length * cfg.pack,  # a packed conversation; single pairs stay far below it
        packing=False,
        padding_free=False,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length",  # less padding: batches of similar length
        eval_strategy="epoch" if has_dev else "no",
        save_strategy="epoch",  # checkpoint saves dominate on CPU: once per epoch (STACK.md)
        save_total_limit=None if has_dev else 2,
        load_best_model_at_end=has_dev,
        metric_for_best_model="eval_loss" if has_dev else None,
        greater_is_better=False if has_dev else None,
        prediction_loss_only=True,
        include_num_input_tokens_seen="non_padding",
        logging_steps=1,
        logging_first_step=True,
        report_to="none",
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=False,
    )


def _batches(trainer, pairs: list[InstructionPair], size: int, name: str) -> list[dict]:
    """Pairs tokenised and padded the way training sees them, in batches of `size`."""
    from datasets import Dataset

    ds = trainer._prepare_dataset(Dataset.from_list(to_records(pairs)), trainer.processing_class, trainer.args,
                                  False, None, name)
    rows = [{"input_ids": ds[i]["input_ids"], "labels": ds[i]["labels"]} if "labels" in ds.column_names
            else {k: ds[i][k] for k in ("input_ids", "completion_mask") if k in ds.column_names}
            for i in range(len(ds))]
    return [trainer.data_collator(rows[i: i + size]) for i in range(0, len(rows), size)]


def _teacher(trainer, cfg: TrainConfig, replay: list[InstructionPair], rank: int = 0, world: int = 1):
    """Top-k distribution of the starting model on the replay sequences (before any step). With several ranks each
    takes its own shard of the replay batches: distinct KD batches per rank, averaged by DDP like the data loss."""
    from injector.distill import Cycler, teacher_batches

    batches = _shard(_batches(trainer, replay, cfg.distill_batch_size, "distill"), rank, world)
    return Cycler(teacher_batches(trainer.model, batches, cfg.distill_top_k), seed=cfg.seed + rank)


def _shard(batches: list, rank: int, world: int) -> list:
    """This rank's share of the batches (every rank its own, averaged by DDP); all of them where too few."""
    return batches[rank::world] if world > 1 and len(batches) >= world else batches


def _starts(trainer, cfg: TrainConfig, prompts: list[str], tokenizer, rank: int = 0, world: int = 1):
    """The starting model's first answer token on the answer-start prompts (`train.start_kd` x `grad_accum` a batch:
    one a step); with several ranks each takes its own shard of the batches."""
    from injector.distill import Cycler, start_batches

    rows = [_chat_ids(tokenizer, [{"role": "user", "content": q}], prompt=True) for q in prompts]
    batches = start_batches(trainer.model, rows, tokenizer.pad_token_id or 0, cfg.start_kd * cfg.grad_accum,
                            cfg.distill_top_k, shared_prefix=trainer.shared_prefix)
    return Cycler(_shard(batches, rank, world), seed=cfg.seed + 1000 + rank)  # a draw order of its own


def _fisher(trainer, spec: EwcSpec, names: list[str], save: bool = True):
    """Diagonal Fisher on the replay pairs, at the starting adapter; cached by model and data (every rank computes
    the same one; rank 0 writes the cache)."""
    from injector import ewc

    if spec.cache.exists():
        return ewc.load(spec.cache)
    batches = _batches(trainer, list(spec.replay[: spec.max_examples]), 8, "fisher")
    fisher = ewc.fisher_diagonal(trainer.model, batches, names)
    if save:
        ewc.save(spec.cache, fisher)
    return fisher


def train_lora(
    pairs: list[InstructionPair],
    base_path: str,
    out_dir: Path,
    cfg: TrainConfig,
    init_adapter: str | None = None,
    sink: MetricSink | None = None,
    quantization: str = "none",
    ewc_spec: EwcSpec | None = None,
    base_sha: str = "",
    resume: bool = False,
    new_repeats: int = 1,
    epochs: int | None = None,
    step: tuple[int, int] | None = None,
    start_prompts: tuple[str, ...] = (),
) -> TrainResult:
    """Fine-tune a LoRA adapter on `pairs` (kind "dev" pairs are the early-stopping split); the new facts' training
    pairs `new_repeats` times per pass (`replay_rotations`: beside a replay pool that many times the mix's), for
    `epochs` passes (default `cfg.epochs`; either way at least the step floor), in optimizer steps of `step`
    (batch_size, grad_accum; default the config's, made smaller for a small night with `cfg.shrink_steps`)."""
    import datasets
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTConfig

    from injector.models import BaseModelRef, device, load_base, load_tokenizer

    pairs = list(pairs) + [p for p in pairs if p.origin == "new" and p.kind != "dev"] * (new_repeats - 1)
    cfg = cfg.model_copy(update={"epochs": epochs}) if epochs else cfg
    train_pairs = [p for p in pairs if p.kind != "dev"]
    dev_pairs = [p for p in pairs if p.kind == "dev"] if cfg.dev_fraction > 0 else []
    if not train_pairs:
        raise InjectorError("no training pairs: every fact was rejected or the recipes produced nothing")
    from injector import distributed, ewc

    dist = distributed.from_env()  # under torchrun/accelerate: this rank's place; the Trainer wraps DDP
    marker = fingerprint(pairs, base_sha, cfg, init_adapter)
    ckpt_dir = out_dir / "checkpoints"
    resume_from = last_complete_checkpoint(ckpt_dir, marker) if resume else None
    if not resume and dist.main:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if dist.multi:
        distributed.barrier()

    torch.manual_seed(cfg.seed)  # LoRA A init
    tokenizer = load_tokenizer(base_path)
    tokenizer.padding_side = "right"  # training pads right; generation pads left
    model = load_base(BaseModelRef(name=base_path, path=base_path, sha256=base_sha), quantization)
    if quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if init_adapter:
        model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    else:
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            task_type="CAUSAL_LM", **_lora_targets(model, cfg.lora.target_modules, cfg.lora.top_layers),
        ))
    precision = resolve_precision(cfg.precision)
    has_dev = bool(dev_pairs)
    # each rank sees 1/world of the data: the step floor counts optimizer steps of the whole job
    rows = pack_rows(supervised(train_pairs, cfg), tokenizer, cfg.pack, cfg.max_length * cfg.pack, cfg.seed)
    if step or cfg.shrink_steps:  # the plan's (counted before the new pairs' repeats), or this mix's
        batch, accum = step or planned_step(cfg, len(rows), dist.world)
        cfg = cfg.model_copy(update={"batch_size": batch, "grad_accum": accum})
    cfg = one_pass_step(cfg, accelerator=device() != "cpu")  # the device policy's, where load_base put it
    cfg = cfg.model_copy(update={"epochs": planned_epochs(cfg, len(rows), dist.world, nearest=new_repeats > 1),
                                 "learning_rate": planned_learning_rate(cfg, len(rows), dist.world)})
    with warnings.catch_warnings():
        # TRL defaults gradient_checkpointing to True: it must be set, though transformers renamed it
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
        args = _sft_config(SFTConfig, cfg, ckpt_dir, precision, has_dev)
    datasets.disable_progress_bars()  # tokenising a few hundred pairs needs no bars
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(to_records(dev_pairs)) if has_dev else None,
        processing_class=tokenizer, callbacks=_callbacks(sink, cfg.patience, has_dev, marker))
    for cb in list(trainer.callback_handler.callbacks):  # the default bar, replaced by QuietProgress
        if type(cb) is ProgressCallback:
            trainer.remove_callback(cb)
    if device() == "cpu" and not dist.multi:  # bound by arithmetic, one process (prefix.py)
        trainer.shared_prefix = cfg.shared_prefix_min_tokens
        trainer.flat = cfg.flat_batches
    if ewc_spec is not None and ewc_spec.lam > 0 and ewc_spec.replay:
        params = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
        with timed("fisher"):
            fisher = _fisher(trainer, ewc_spec, list(params), save=dist.main)
        trainer.ewc_penalty = ewc.Penalty({n: p.detach().clone() for n, p in params.items()},
                                          {n: f.to(params[n].device, params[n].dtype) for n, f in fisher.items()})
        trainer.ewc_lambda = ewc_spec.lam
    if cfg.drop_learned and cfg.pack == 1:
        trainer.learned = learned_facts(train_pairs, tokenizer)
        trainer.learned_ignore = torch.tensor(sorted(trainer.learned.ignore), dtype=torch.long)
    if cfg.entity_weight != 1:
        trainer.entities, trainer.entity_weight = entity_index(train_pairs, tokenizer), cfg.entity_weight
    replay = [p for p in train_pairs if p.origin == "replay"]
    if cfg.distill_weight > 0 and replay:
        with timed("teacher_pass"):
            trainer.distill = _teacher(trainer, cfg, replay, dist.rank, dist.world)
        trainer.distill_weight = cfg.distill_weight
        trainer.distill_every = cfg.distill_every
        if cfg.start_kd > 0 and cfg.start_weight > 0 and start_prompts:
            with timed("teacher_pass"):
                trainer.start = _starts(trainer, cfg, list(start_prompts), tokenizer, dist.rank, dist.world)
            trainer.start_weight = cfg.start_weight

    start = time.perf_counter()
    try:
        with timed("training"):
            output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except BaseException as e:
        for cb in trainer.callback_handler.callbacks:  # close the bars now: the error is the last line printed
            for bar in ("training_bar", "prediction_bar"):
                if getattr(cb, bar, None) is not None:
                    getattr(cb, bar).close()
                    setattr(cb, bar, None)
        if isinstance(e, torch.OutOfMemoryError):
            raise InfraError(f"out of memory training at batch {cfg.batch_size} x {cfg.max_length} tokens: lower "
                             "train.batch_size (raise train.grad_accum to keep the effective batch, with "
                             "train.one_pass_on_accelerator=false on a GPU), set "
                             "train.gradient_checkpointing=true, or use model.quantization=nf4 on a GPU") from None
        raise
    wall = time.perf_counter() - start
    epochs_done = float(trainer.state.epoch or cfg.epochs)
    in_sync = _check_replicas(trainer.model, out_dir, dist) if dist.multi else None
    adapter_dir = out_dir / "adapter"
    if dist.main:
        shutil.rmtree(adapter_dir, ignore_errors=True)
        trainer.model.save_pretrained(str(adapter_dir))
    history = trainer.state.log_history
    best = trainer.state.best_metric
    seen = trainer.state.num_input_tokens_seen  # counted before compute_loss: less the rows of learned facts
    seen -= trainer.learned.tokens_skipped if trainer.learned is not None and seen else 0
    return TrainResult(
        adapter_dir=str(adapter_dir),
        steps=trainer.state.global_step,
        epochs=epochs_done,
        train_loss=float(output.training_loss),
        best_eval_loss=float(best) if best is not None else None,
        tokens_per_s=seen / wall if wall > 0 and seen else 0.0,
        wall_s=wall,
        n_examples=len(train_pairs),
        loss_history=tuple((h["step"], float(h["loss"])) for h in history if "loss" in h),
        eval_history=tuple((h["step"], float(h["eval_loss"])) for h in history if "eval_loss" in h),
        stopped_early=has_dev and epochs_done < cfg.epochs - 1e-6,
        skipped_share=trainer.learned.skipped_share if trainer.learned is not None else 0.0,
        replicas_in_sync=in_sync,
    )


def _check_replicas(model, out_dir: Path, dist) -> bool:
    """Every rank's trainable weights must be bit-identical after training (DDP's promise); each rank records its
    digest in `out_dir/rank-<r>.sha256`, and a divergence is an error, not a silently different adapter."""
    from injector import distributed

    mine = distributed.digest(model)
    (out_dir / f"rank-{dist.rank}.sha256").write_text(mine + "\n")
    digests = distributed.gather(mine)
    if len(set(digests)) > 1:
        raise InjectorError(f"the {dist.world} training processes ended with different adapters "
                            f"({', '.join(d[:12] for d in digests)}): gradients were not synchronised")
    return True
