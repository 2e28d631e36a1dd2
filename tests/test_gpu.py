"""GPU-only: the default training path on CUDA (replay + distillation + EWC), bf16 weights, nf4 end to end.

Skipped without CUDA; `scripts/gpu_check.sh` runs them on a lent GPU together with one timed night.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from conftest import TINY_FACTS, build_tiny_model, eval_dir, tiny_config

from injector.recipes import build_pairs, build_probes, load_recipes
from injector.records import FactChange, Triple

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture()
def pairs():
    from conftest import ROOT

    recipes = load_recipes(ROOT / "data_recipes")
    changes = [FactChange(Triple(**f)) for f in TINY_FACTS]
    replay = [replace(p, origin="replay") for p in build_pairs(changes[2:], recipes) if p.kind == "forward"]
    return build_pairs(changes[:2], recipes) + replay, build_probes(changes[:2], recipes)


def _spec(tmp_path, pairs):
    from injector.train import EwcSpec

    return EwcSpec(1e-3, tuple(p for p in pairs if p.origin == "replay"), tmp_path / "fisher.safetensors")


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_default_path_on_cuda(tmp_path, pairs, quantization):
    """Replay + logit distillation + EWC, as every default run does; the candidate answers by generation."""
    from injector.evaluate import evaluate
    from injector.models import BaseModelRef, load_tokenizer, load_with_adapter
    from injector.train import train_lora

    if quantization == "nf4":
        pytest.importorskip("bitsandbytes")
    model_dir = build_tiny_model(tmp_path / "m", hidden=64)  # bitsandbytes needs layers >= 64 wide
    train_pairs, probes = pairs
    cfg = tiny_config(model_dir, "train.epochs=40", "train.distill_weight=3").train
    torch.cuda.reset_peak_memory_stats()
    out = train_lora(train_pairs, str(model_dir), tmp_path / "run", cfg, quantization=quantization,
                     ewc_spec=_spec(tmp_path, train_pairs))
    assert out.steps > 0 and math.isfinite(out.train_loss)
    assert any(h for h in out.loss_history)
    ref = BaseModelRef(str(model_dir), str(model_dir), "x")
    model = load_with_adapter(ref, out.adapter_dir, quantization)  # nf4: evaluated without merging
    assert next(model.parameters()).is_cuda
    report = evaluate(model, load_tokenizer(str(model_dir)), probes, 16, 8, 1, progress=False)
    print(f"\n[{quantization}] efficacy {report.accuracy('efficacy'):.2f}, peak GPU memory "
          f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    assert report.accuracy("efficacy") >= 0.5, [r.answer for r in report.results]


def test_weights_are_bf16_on_cuda_and_one_night_reports_peak_memory(tmp_path, home, tiny_facts_file):
    from injector.models import BaseModelRef, load_base
    from injector.pipeline import run_train

    model_dir = build_tiny_model(tmp_path / "m", hidden=64)
    assert load_base(BaseModelRef(str(model_dir), str(model_dir), "x")).dtype == torch.bfloat16
    lenient = eval_dir(tmp_path, "absolute:\n  min_efficacy: 0.0\n  min_generalisation: 0.0\n"
                                 "  max_latency_ms_p95: 100000\nrelative:\n  max_general_ppl_increase: null\n"
                                 "  min_locality_ratio: 0.0\n  min_fact_ppl_drop: null\n")
    out = run_train([tiny_facts_file], tiny_config(model_dir, f"eval.dir={lenient}", "train.ewc_lambda=0.001"),
                    home, log=print)
    assert out.version == "1" and out.peak_gpu_mib and out.peak_gpu_mib > 0
    print(f"\none night on the tiny model: peak GPU memory {out.peak_gpu_mib:.0f} MiB; stages {out.stage_s}")


def test_answer_starts_ride_in_the_training_pass_on_cuda(tmp_path, tiny_model_dir, monkeypatch):
    """On CUDA the answer-start batches (`train.start_kd`) join the training micro-batch's pass (`distill.joined`)
    instead of a pass of their own, and still hold the first answer token of their prompts (the CPU test's check)."""
    import test_train
    from conftest import ROOT

    from injector import distill

    made, joined = set(), set()
    real_starts, real_joined = distill.start_batches, distill.joined

    def starts(*a, **k):
        out = real_starts(*a, **k)
        made.update(id(b) for b in out)
        return out

    def join(ids, mask, kept, b, pad):
        joined.add(id(b))
        return real_joined(ids, mask, kept, b, pad)

    monkeypatch.setattr(distill, "start_batches", starts)
    monkeypatch.setattr(distill, "joined", join)
    changes = [FactChange(Triple(**f)) for f in TINY_FACTS]
    test_train.test_answer_start_distillation_holds_the_first_answer_token_of_its_prompts(
        tmp_path, tiny_model_dir, changes, load_recipes(ROOT / "data_recipes"))
    assert made & joined, "the answer starts never joined a training pass on CUDA"
