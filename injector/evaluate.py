"""Evaluation by generation: batched greedy answers (left padding, KV cache), judged on the text.

Teacher-forced token accuracy flatters and is not used for fact accuracy.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Sequence

from injector.records import EvalReport, Probe, ProbeResult

_WS = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _WS.sub(" ", text.lower()).strip()


def judge(probe: Probe, answer: str) -> bool:
    """Correct when one accepted answer occurs in the generation and no forbidden one does; a probe with no
    accepted answers (`neighbourhood`) only forbids."""
    text = normalise(answer)
    accepted = [a for a in probe.answers if a.strip()]
    return (not probe.answers or any(normalise(a) in text for a in accepted)) and not any(
        normalise(f) in text for f in probe.forbidden if f.strip()
    )


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    cpu = platform.processor() or "CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def _chat(probe: Probe) -> list[dict]:
    return [*probe.messages, {"role": "user", "content": probe.question}]


def generate(model, tokenizer, chats: Sequence[list[dict]], max_new_tokens: int = 32, batch_size: int = 32,
             progress: bool = False) -> list[str]:
    """Greedy answers for many chats, batched by similar length with left padding."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[str] = [""] * len(texts)
    dev = next(model.parameters()).device
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc="generating", disable=not progress, unit="batch"):
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id)
        for row, i in enumerate(idx):
            answers[i] = tokenizer.decode(out[row, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return answers


def latency_sample(probes: Sequence[Probe], n: int) -> list[Probe]:
    """The probes timed: general-knowledge ones first (a candidate should answer them as the reference does; a new
    fact's probe changes answer on purpose), then the rest in order."""
    general = [p for p in probes if p.kind == "locality"]
    return (general + [p for p in probes if p.kind != "locality"])[:n]


def paired_latency(models: Sequence, tokenizer, probes: Sequence[Probe], max_new_tokens: int, n: int,
                   repeats: int = 2) -> list[tuple[float, float, float]]:
    """(p50, p95 ms, mean answer tokens) per model, answering the same probes one at a time (batch 1), the models
    interleaved probe by probe and run by run, so that the machine's load falls on all alike. A probe's time is the
    fastest of `repeats` runs (noise only adds time: a scheduler hiccup is not the model's); one warm-up per
    model."""
    sample = latency_sample(probes, n)
    if not sample:  # n = 0: not timed
        return [(float("nan"), float("nan"), float("nan"))] * len(models)
    for m in models:
        generate(m, tokenizer, [_chat(sample[0])], max_new_tokens, 1)
    times: list[list[float]] = [[] for _ in models]
    tokens: list[list[int]] = [[] for _ in models]
    for p in sample:
        runs: list[list[float]] = [[] for _ in models]
        answers = [""] * len(models)
        for _ in range(repeats):
            for k, m in enumerate(models):
                t0 = time.perf_counter()
                answers[k] = generate(m, tokenizer, [_chat(p)], max_new_tokens, 1)[0]
                runs[k].append((time.perf_counter() - t0) * 1000)
        for k in range(len(models)):
            times[k].append(min(runs[k]))
            tokens[k].append(len(tokenizer(answers[k], add_special_tokens=False)["input_ids"]))
    out = []
    for k in range(len(models)):
        t = sorted(times[k])
        out.append((statistics.median(t), t[min(len(t) - 1, round(0.95 * (len(t) - 1)))],
                    statistics.fmean(tokens[k])))
    return out


def measure_latency(model, tokenizer, probes: Sequence[Probe], max_new_tokens: int, n: int,
                    repeats: int = 2) -> tuple[float, float]:
    """p50/p95 over probes of the milliseconds to answer one probe alone (batch 1), after one warm-up."""
    p50, p95, _ = paired_latency([model], tokenizer, probes, max_new_tokens, n, repeats)[0]
    return p50, p95


SHORT_ANSWER_KINDS = ("efficacy", "generalisation", "other_family", "reverse", "changed", "retention")
_SLACK = 10  # tokens beyond the expected answer: room for "The capital of X is ..." before the answer


def budgets(tokenizer, probes: Sequence[Probe], max_new_tokens: int) -> list[int]:
    """Per-probe decode budget: a fact probe expects a short entity (a few tokens), so it stops at the answer's
    length plus slack instead of the full budget; other probes (general knowledge) keep the full budget.

    The slack is at least the question's length: an answer in a sentence restates the question's subject before
    the entity ("The Interpretation of Dreams was written by ..."), and a long subject must not cut it off."""
    out = []
    for p in probes:
        if p.kind in SHORT_ANSWER_KINDS and p.answers:
            n = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in p.answers)
            slack = max(_SLACK, len(tokenizer(p.question, add_special_tokens=False)["input_ids"]))
            out.append(min(max_new_tokens, n + slack))
        else:
            out.append(max_new_tokens)
    return out


def evaluate(model, tokenizer, probes: Sequence[Probe], max_new_tokens: int = 32, batch_size: int = 32,
             latency_samples: int = 10, progress: bool = True, known: dict[str, str] | None = None) -> EvalReport:
    """Answer every probe by generation and judge it; measure single-probe latency.

    `known`: answers this same model gave before, by question (a cache); those probes are not generated again.
    Probes are batched by decode budget (short fact answers apart from open questions), so that a batch of 3-token
    answers does not decode until one long answer ends."""
    t0 = time.perf_counter()
    known = known or {}
    todo = [i for i, p in enumerate(probes) if not (p.question in known and not p.messages)]
    limits = budgets(tokenizer, [probes[i] for i in todo], max_new_tokens)
    pending = set(todo)
    answers = {i: known[p.question] for i, p in enumerate(probes) if i not in pending}
    for budget in sorted(set(limits)):
        idx = [i for i, b in zip(todo, limits) if b == budget]
        for i, a in zip(idx, generate(model, tokenizer, [_chat(probes[i]) for i in idx], budget, batch_size,
                                      progress)):
            answers[i] = a
    results = tuple(ProbeResult(probe=p, answer=answers[i], correct=judge(p, answers[i]))
                    for i, p in enumerate(probes))
    wall = time.perf_counter() - t0
    p50, p95 = measure_latency(model, tokenizer, probes, max_new_tokens, latency_samples)
    return EvalReport(results=results, latency_ms_p50=p50, latency_ms_p95=p95, hardware=hardware(), wall_s=wall)


def perplexity(model, tokenizer, texts: Sequence[str], max_len: int = 256, batch_size: int = 8,
               max_tokens: int | None = None) -> float:
    """Token perplexity of `texts` (each cut into windows of `max_len` tokens), up to `max_tokens` tokens."""
    import math

    import torch

    windows: list[list[int]] = []
    total = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for i in range(0, len(ids) - 1, max_len):
            w = ids[i: i + max_len]
            if len(w) > 1 and (max_tokens is None or total < max_tokens):
                windows.append(w)
                total += len(w)
    if not windows:
        return float("nan")
    from tqdm.auto import tqdm

    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll, count = 0.0, 0
    windows.sort(key=len)
    steps = range(0, len(windows), batch_size)
    for i in tqdm(steps, desc="perplexity", unit="batch", disable=len(steps) < 8):
        chunk = windows[i: i + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, w in enumerate(chunk):
            ids[r, : len(w)] = torch.tensor(w)
            mask[r, : len(w)] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target, valid = ids[:, 1:], mask[:, 1:].bool()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        nll += float(losses[valid].sum())
        count += int(valid.sum())
    return math.exp(nll / count)


def answer_logprobs(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int):
    """Per-answer-token log-softmax over the vocabulary, teacher-forced, one tensor per (prompt, answer)."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "right"
    out = []
    dev = next(model.parameters()).device
    steps = range(0, len(prompts), batch_size)
    for i in tqdm(steps, desc="KL log-probs", unit="batch", disable=len(steps) < 4):
        ps, ans = prompts[i: i + batch_size], answers[i: i + batch_size]
        heads = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=False) for p in ps]
        n_head = [len(tokenizer(h, add_special_tokens=False)["input_ids"]) for h in heads]
        enc = tokenizer([h + a for h, a in zip(heads, ans)], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(dev)
        with torch.inference_mode():
            logp = torch.log_softmax(model(**enc).logits.float(), -1)
        for r, n in enumerate(n_head):
            end = int(enc["attention_mask"][r].sum())
            out.append(logp[r, n - 1: end - 1].cpu())  # positions that predict the answer tokens
    tokenizer.padding_side = "left"
    return out


def kl_drift(reference, candidate, tokenizer, prompts: Sequence[str], answers: Sequence[str],
             batch_size: int = 16) -> float:
    """Mean per-token KL(reference || candidate), teacher-forced on the reference's own answers."""

    ref = answer_logprobs(reference, tokenizer, prompts, answers, batch_size)
    return kl_from(ref, answer_logprobs(candidate, tokenizer, prompts, answers, batch_size))


def kl_from(ref: list, cand: list) -> float:
    """Mean per-token KL(ref || cand) from two `answer_logprobs` results (the reference's computed first, so that
    the two models need not be in memory at once)."""
    import torch

    kls = [(r.exp() * (r - c)).sum(-1) for r, c in zip(ref, cand) if len(r)]
    if not kls:
        return float("nan")
    return float(torch.cat(kls).mean())


def in_context(probes: Sequence[Probe], facts: Sequence[str]) -> list[Probe]:
    """The in-context baseline: the facts stated in a first user turn, no training."""
    from dataclasses import replace

    context = ({"role": "user", "content": "Facts:\n" + "\n".join(f"- {f}" for f in facts)},
               {"role": "assistant", "content": "Noted."})
    return [replace(p, messages=context + tuple(p.messages)) for p in probes]
