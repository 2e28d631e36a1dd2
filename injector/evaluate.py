"""Evaluation by generation: batched greedy answers (left padding, KV cache), judged on the text.

Teacher-forced token accuracy flatters and is not used for fact accuracy.
"""

from __future__ import annotations

import math
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


def _prompt(tokenizer, chat: list[dict]) -> str:
    return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)


def _answer(tokenizer, new_ids) -> str:
    return tokenizer.decode(new_ids, skip_special_tokens=True).strip()


def generate(model, tokenizer, chats: Sequence[list[dict]], max_new_tokens: int = 32, batch_size: int = 32,
             progress: bool = False) -> list[str]:
    """Greedy answers for many chats, batched by similar length with left padding."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    texts = [_prompt(tokenizer, c) for c in chats]
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
            answers[i] = _answer(tokenizer, out[row, enc["input_ids"].shape[1]:])
    return answers


def latency_sample(probes: Sequence[Probe], n: int) -> list[Probe]:
    """The probes timed: general-knowledge ones first (a candidate should answer them as the reference does; a new
    fact's probe changes answer on purpose), spread evenly over them where there are more than `n` (the first dozen of
    eval/locality.en.jsonl are ten capitals: one relation's answer style is not the candidate's), then the rest in
    order."""
    general = [p for p in probes if p.kind == "locality"]
    if len(general) > n:
        general = [general[i * len(general) // n] for i in range(n)]
    return (general + [p for p in probes if p.kind != "locality"])[:n]


def mean_answer_tokens(tokenizer, results: Sequence[ProbeResult], kind: str = "locality") -> tuple[float, int]:
    """(mean answer length in tokens, probes) over the results of `kind`: (nan, 0) where there are none."""
    answers = [r.answer for r in results if r.probe.kind == kind]
    if not answers:
        return math.nan, 0
    return statistics.fmean(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers), len(answers)


def _timed(model, tokenizer, probe: Probe, max_new_tokens: int, exact: bool = False) -> tuple[float, int, str]:
    """(ms, tokens decoded, answer) for one probe alone (batch 1); `exact`: decode exactly `max_new_tokens`."""
    import torch

    text = _prompt(tokenizer, _chat(probe))
    t0 = time.perf_counter()
    enc = tokenizer([text], return_tensors="pt", add_special_tokens=False).to(next(model.parameters()).device)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens if exact else None,
                             do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id)
    new = out[0, enc["input_ids"].shape[1]:]
    answer = _answer(tokenizer, new)
    return (time.perf_counter() - t0) * 1000, int(new.shape[0]), answer


def paired_latency(models: Sequence, tokenizer, probes: Sequence[Probe], max_new_tokens: int, n: int,
                   repeats: int = 2) -> list[tuple[float, float, float, float]]:
    """(p50, p95 ms, mean answer tokens, p95 ms at equal length) per model, answering the same probes one at a time
    (batch 1), the models interleaved probe by probe and run by run, so that the machine's load falls on all alike.

    Each model first answers each probe freely (p50/p95: what a user waits; the answer's length). Then every model
    decodes the same number of tokens for the probe (the longest free answer's): that time measures the model's
    speed on equal work, the thing a merged adapter could change, apart from what it says. A p95 of free answers
    over a dozen probes is the second-longest answer's time, and moved 0.6x-1.8x between two nights of the same
    speed (docs/BENCHMARKS.md); length is gated apart (mean answer tokens). An equal-length time is the fastest of
    `repeats` runs, the free run among them where it decoded as many tokens (noise only adds time). One warm-up
    per model."""
    sample = latency_sample(probes, n)
    if not sample:  # n = 0: not timed
        return [(float("nan"),) * 4] * len(models)
    for m in models:
        _timed(m, tokenizer, sample[0], max_new_tokens)
    free: list[list[float]] = [[] for _ in models]
    equal: list[list[float]] = [[] for _ in models]
    tokens: list[list[int]] = [[] for _ in models]
    for p in sample:
        runs = [_timed(m, tokenizer, p, max_new_tokens) for m in models]
        length = max(1, *(r[1] for r in runs))
        best = [r[0] if r[1] == length else math.inf for r in runs]
        for _ in range(max(1, repeats - 1)):
            for k, m in enumerate(models):
                best[k] = min(best[k], _timed(m, tokenizer, p, length, exact=True)[0])
        for k, (ms, _, answer) in enumerate(runs):
            free[k].append(ms)
            equal[k].append(best[k])
            tokens[k].append(len(tokenizer(answer, add_special_tokens=False)["input_ids"]))
    return [(statistics.median(free[k]), _p95(free[k]), statistics.fmean(tokens[k]), _p95(equal[k]))
            for k in range(len(models))]


def _p95(values: list[float]) -> float:
    t = sorted(values)
    return t[min(len(t) - 1, round(0.95 * (len(t) - 1)))]


def measure_latency(model, tokenizer, probes: Sequence[Probe], max_new_tokens: int, n: int,
                    repeats: int = 2) -> tuple[float, float]:
    """p50/p95 over probes of the milliseconds to answer one probe alone (batch 1), after one warm-up."""
    p50, p95, _, _ = paired_latency([model], tokenizer, probes, max_new_tokens, n, repeats)[0]
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
        heads = [_prompt(tokenizer, [{"role": "user", "content": p}]) for p in ps]
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
