"""Training on the tiny model: adapter learns, base untouched, answers by generation, guards."""

import math

import pytest
import torch
from conftest import TINY_FACTS, tiny_config

from injector.evaluate import evaluate
from injector.models import BaseModelRef, load_tokenizer, load_with_adapter
from injector.recipes import build_pairs, build_probes, load_recipes
from injector.records import FactChange, Triple
from injector.train import NonFiniteLoss, resolve_precision, train_lora
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def changes():
    return [FactChange(Triple(f["subject"], f["predicate"], f["object"])) for f in TINY_FACTS]


@pytest.fixture(scope="module")
def recipes(request):
    from conftest import ROOT

    return load_recipes(ROOT / "data_recipes")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, changes, recipes):
    cfg = tiny_config(tiny_model_dir).train
    pairs = build_pairs(changes, recipes, seed=0)
    out = tmp_path_factory.mktemp("run")
    steps = []
    result = train_lora(pairs, str(tiny_model_dir), out, cfg, sink=lambda m, s: steps.append((s, m)))
    return result, steps


def test_adapter_changes_and_base_does_not(trained, tiny_model_dir):
    result, steps = trained
    adapter = load_file(f"{result.adapter_dir}/adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: training moved it
    base_after = load_file(f"{tiny_model_dir}/model.safetensors")
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for k, v in fresh.state_dict().items():
        if k in base_after:
            assert torch.equal(base_after[k], v)
    assert result.steps > 0 and math.isfinite(result.train_loss) and result.tokens_per_s > 0
    assert any("loss" in m for _, m in steps)  # per-step metrics reached the sink


def test_trained_model_answers_by_generation(trained, tiny_model_dir, changes, recipes):
    result, _ = trained
    ref = BaseModelRef("tiny", str(tiny_model_dir), "")
    tok = load_tokenizer(str(tiny_model_dir))
    probes = [p for p in build_probes(changes, recipes) if p.kind == "efficacy"]
    base_report = evaluate(load_with_adapter(ref, None), tok, probes, max_new_tokens=16, latency_samples=1,
                           progress=False)
    report = evaluate(load_with_adapter(ref, result.adapter_dir), tok, probes, max_new_tokens=16, latency_samples=1,
                      progress=False)
    assert base_report.accuracy("efficacy") == 0.0
    assert report.accuracy("efficacy") >= 0.75, [r.answer for r in report.results]


def test_non_finite_loss_stops_training(tmp_path, tiny_model_dir, changes, recipes):
    cfg = tiny_config(tiny_model_dir, "train.learning_rate=1e30", "train.epochs=3").train
    with pytest.raises(NonFiniteLoss, match="nothing was registered"):
        train_lora(build_pairs(changes, recipes), str(tiny_model_dir), tmp_path, cfg)


def test_precision_choice():
    assert resolve_precision("fp32") == "fp32"
    assert resolve_precision("auto") in ("fp32", "bf16")
    if not torch.cuda.is_available() and "avx512_bf16" not in open("/proc/cpuinfo").read():
        assert resolve_precision("auto") == "fp32"  # bf16 matmul is ~150x slower without AVX512-BF16
