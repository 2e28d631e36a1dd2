"""Training on the tiny model: adapter learns, base untouched, answers by generation, guards."""

import math

import pytest
import torch
from conftest import TINY_FACTS, tiny_config
from safetensors.torch import load_file

from injector.evaluate import evaluate
from injector.models import BaseModelRef, load_tokenizer, load_with_adapter
from injector.recipes import build_pairs, build_probes, load_recipes
from injector.records import FactChange, InstructionPair, Triple
from injector.train import NonFiniteLoss, _chat_ids, resolve_precision, train_lora


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
    if not torch.cuda.is_available() and "amx_bf16" not in open("/proc/cpuinfo").read():
        assert resolve_precision("auto") == "fp32"  # bf16 is slower without AMX (~150x on AVX2, 1.7x on AVX512-BF16)


def test_weights_dtype_follows_injector_dtype_and_names_a_bad_value(monkeypatch):
    from injector.errors import InjectorError
    from injector.models import weights_dtype

    monkeypatch.setenv("INJECTOR_DTYPE", "bfloat16")
    assert weights_dtype() == torch.bfloat16
    monkeypatch.setenv("INJECTOR_DTYPE", "float32")
    assert weights_dtype() == torch.float32
    assert resolve_precision("auto") == "fp32"  # fp32 weights: fp32 compute, on any device
    assert resolve_precision("bf16") == "bf16"  # an explicit choice stands
    monkeypatch.setenv("INJECTOR_DTYPE", "fp8")
    with pytest.raises(InjectorError, match="INJECTOR_DTYPE='fp8'"):
        weights_dtype()


# --- EWC, early stopping, QLoRA, resume ------------------------------------------------------------------

def _peft(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))


def _moved_peft(tiny_model_dir):
    """`_peft` with a non-zero adapter (seeded), so the LoRA A matrices get gradients too."""
    torch.manual_seed(0)
    model = _peft(tiny_model_dir)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model


def test_ewc_penalty_zero_at_anchor_and_grows_with_distance(tiny_model_dir):
    from injector import ewc

    model = _peft(tiny_model_dir)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    fisher = {n: torch.rand_like(anchor[n]) + 0.1 for n in names}
    assert ewc.penalty(model, anchor, fisher).item() == 0.0
    delta = {n: torch.randn_like(anchor[n]) * 1e-2 for n in names}
    values = []
    for scale in (1.0, 2.0):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in names:
                    p.copy_(anchor[n] + scale * delta[n])
        values.append(ewc.penalty(model, anchor, fisher).item())
    assert values[0] > 0 and values[1] == pytest.approx(4 * values[0], rel=1e-4)


def test_ewc_keeps_parameters_closer_to_the_start(tmp_path, tiny_model_dir, changes, recipes):
    from injector.train import EwcSpec

    start = tmp_path / "start"
    _peft(tiny_model_dir).save_pretrained(start)
    new, old = changes[:2], changes[2:]
    replay = tuple(p for p in build_pairs(old, recipes) if p.kind == "forward")
    pairs = build_pairs(new, recipes)
    cfg = tiny_config(tiny_model_dir, "train.epochs=8").train
    dist = {}
    for lam in (0.0, 50.0):
        spec = EwcSpec(lam, replay, tmp_path / f"fisher-{lam}.safetensors")
        steps: list[dict] = []
        out = train_lora(pairs, str(tiny_model_dir), tmp_path / f"run-{lam}", cfg, init_adapter=str(start),
                         ewc_spec=spec, sink=lambda m, s, steps=steps: steps.append(m))
        a = load_file(f"{start}/adapter_model.safetensors")
        b = load_file(f"{out.adapter_dir}/adapter_model.safetensors")
        dist[lam] = sum(((a[k] - b[k]) ** 2).sum().item() for k in a)
        if lam:
            assert any("ewc_penalty" in m for m in steps)  # logged as its own metric
            assert (tmp_path / f"fisher-{lam}.safetensors").exists()  # cached
    assert dist[50.0] < 0.5 * dist[0.0], dist


def test_early_stopping_fires_on_a_plateau(tmp_path, tiny_model_dir, changes, recipes):
    # lr so small that the dev loss cannot move: patience 3 stops after the 4th evaluation
    cfg = tiny_config(tiny_model_dir, "train.learning_rate=1e-30", "train.epochs=10", "train.patience=3").train
    out = train_lora(build_pairs(changes, recipes), str(tiny_model_dir), tmp_path, cfg)
    assert out.stopped_early and out.epochs == pytest.approx(4.0)
    assert len(out.eval_history) == 4


def test_nf4_without_cuda_is_one_clear_error(tmp_path, tiny_model_dir, changes, recipes):
    from injector.errors import InjectorError

    if torch.cuda.is_available():
        pytest.skip("CUDA present: see test_nf4_trains_on_gpu")
    cfg = tiny_config(tiny_model_dir, "train.epochs=1").train
    with pytest.raises(InjectorError, match="nf4 needs a CUDA GPU"):
        train_lora(build_pairs(changes, recipes), str(tiny_model_dir), tmp_path, cfg, quantization="nf4")


def test_teacher_pass_grouped_equals_one_batch_at_a_time(tiny_model_dir, changes, recipes):
    """Several KD batches share one forward pass (padded to a common width); each keeps its own top-k rows."""
    from transformers import AutoModelForCausalLM

    from injector.distill import teacher_batches

    tok = load_tokenizer(str(tiny_model_dir))
    tok.padding_side = "right"
    texts = [tok.apply_chat_template(list(p.messages), tokenize=False) for p in build_pairs(changes, recipes)][:7]
    batches = [dict(tok(texts[i: i + 2], return_tensors="pt", padding=True)) for i in range(0, 7, 2)]
    assert len({b["input_ids"].shape[1] for b in batches}) > 1  # different widths: padding is exercised
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    one, grouped = teacher_batches(model, batches, k=8, group=1), teacher_batches(model, batches, k=8, group=3)
    assert len(one) == len(grouped) == len(batches)
    for a, b in zip(one, grouped):
        assert torch.equal(a.input_ids, b.input_ids) and a.idx.shape == b.idx.shape
        assert torch.allclose(a.logp, b.logp, atol=1e-4)


def test_distillation_keeps_the_starting_distribution_on_replay(tmp_path, tiny_model_dir, changes, recipes):
    """Logit distillation on replay text: the trained model stays closer to the start there, and logs `kd`."""
    from dataclasses import replace

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from injector.distill import kd_loss, teacher_batches

    start = tmp_path / "start"
    _peft(tiny_model_dir).save_pretrained(start)
    # bare-entity answers: the new facts' answers share no sentence with the replay's, so that training them moves
    # the replay text's distribution (with sentence answers the tiny model drifts there half as much)
    recipes = replace(recipes, answer_style="short")
    replay = [replace(p, origin="replay") for p in build_pairs(changes[2:], recipes) if p.kind == "forward"]
    pairs = build_pairs(changes[:2], recipes) + replay
    tok = load_tokenizer(str(tiny_model_dir))
    texts = [tok.apply_chat_template(list(p.messages), tokenize=False) for p in replay]
    enc = tok(texts, return_tensors="pt", padding=True)

    def drift(adapter_dir):
        ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(start))
        cand = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir)
        batch = teacher_batches(ref, [dict(enc)], k=64)[0]
        with torch.no_grad():
            return kd_loss(cand.eval(), batch).item()

    kl = {}
    for w, every in ((0.0, "micro_batch"), (20.0, "micro_batch"), (20.0, "step")):
        cfg = tiny_config(tiny_model_dir, "train.epochs=6", f"train.distill_weight={w}", "train.grad_accum=2",
                          f"train.distill_every={every}").train
        steps: list[dict] = []
        out = train_lora(pairs, str(tiny_model_dir), tmp_path / f"run-{w}-{every}", cfg, init_adapter=str(start),
                         sink=lambda m, s, steps=steps: steps.append(m))
        kl[w, every] = drift(out.adapter_dir)
        assert any("kd" in m for m in steps) == bool(w)
    assert kl[20.0, "micro_batch"] < 0.5 * kl[0.0, "micro_batch"], kl
    assert kl[20.0, "step"] < kl[0.0, "micro_batch"], kl  # one KD batch per optimizer step still holds the start


def test_replay_text_joined_to_a_training_batch_gives_the_same_logits_and_kd(tiny_model_dir):
    """The distillation batch rides in the training micro-batch's forward pass (one pass, not two): the rows of each
    keep the logits they have alone, so the loss is the same, and so is its gradient."""
    from injector.distill import joined, kd_from_logits, kd_loss, positions, teacher_batches

    torch.manual_seed(0)
    model = _peft(tiny_model_dir)
    with torch.no_grad():  # a non-zero adapter: the student is not the teacher
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    tok = load_tokenizer(str(tiny_model_dir))
    rep = tok(["the capital of france is paris .", "who wrote hamlet ? shakespeare ."], return_tensors="pt",
              padding=True)
    teacher = teacher_batches(_peft(tiny_model_dir), [dict(rep)], k=16)[0]
    train = tok(["who is the ceo of zorvex dynamics ? marlena quist . " * 3, "hi"], return_tensors="pt",
                padding=True)
    keep = train["attention_mask"].bool().clone()
    keep[:, :3] = False
    ids, mask, kept = joined(train["input_ids"], train["attention_mask"], keep, teacher, tok.pad_token_id or 0)
    assert ids.shape[0] == 4 and kept.sum() == keep.sum() + positions(teacher).sum()
    model.eval()
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=kept).logits
    n_kd = teacher.idx.shape[0]
    alone = model(input_ids=train["input_ids"], attention_mask=train["attention_mask"], logits_to_keep=keep).logits
    assert torch.allclose(logits[:-n_kd], alone, atol=1e-5)
    kd = kd_from_logits(logits[-n_kd:], teacher)
    assert kd > 1e-4 and torch.allclose(kd, kd_loss(model, teacher), atol=1e-6)


def test_a_batchs_common_prompt_prefix_computed_once_gives_the_same_logits_and_gradients(tiny_model_dir):
    """Chat conversations share the template's prefix: run once and its keys and values repeated for every row, the
    kept logits and the adapter's gradients are those of the full pass; a prefix is cut where a row's logits are
    kept or a row's padding starts, and too short a saving takes the full pass."""
    from injector import prefix

    model = _moved_peft(tiny_model_dir)
    tok = load_tokenizer(str(tiny_model_dir))
    tok.padding_side = "right"
    rows = [_chat_ids(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
            for q, a in (("who wrote hamlet ?", "shakespeare ."), ("what is the capital of france ?", "paris ."),
                         ("hello", "hello world"))]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    header = len(_chat_ids(tok, [{"role": "user", "content": "hello"}], prompt=True))
    keep = mask.bool() & (torch.arange(width) >= header - 1)  # from each row's answer on (roughly)
    shared = prefix.common_prefix(ids, mask, keep)
    assert 0 < shared <= header - 1 and (ids[:, :shared] == ids[0, :shared]).all()

    def run(min_saved):
        model.zero_grad()
        out = prefix.logits(model, ids, mask, keep, min_saved)
        out.float().pow(2).mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    full, g_full = run(None)
    once, g_once = run(1)
    assert full.shape == (int(keep.sum()), model.config.vocab_size)
    assert torch.allclose(once, full, atol=1e-5)
    assert all(torch.allclose(g_once[n], g, atol=1e-5, rtol=1e-4) for n, g in g_full.items())
    assert any(g.abs().sum() > 0 for n, g in g_full.items() if "lora_A" in n)
    # the prefix ends where a row's logits are kept, and where a row's padding starts
    early = keep.clone()
    early[1, 2] = True
    assert prefix.common_prefix(ids, mask, early) == 2
    short = mask.clone()
    short[2, 3:] = 0
    assert prefix.common_prefix(ids, short, keep) == min(shared, 3)
    # a saving under the bar: the full pass, no prefix pass
    calls = []
    decoder = model.get_base_model().model  # every pass runs it: the prefix's (no LM head) and the rows'
    hook = decoder.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    prefix.logits(model, ids, mask, keep, shared * 2 + 1)
    prefix.logits(model, ids, mask, keep, shared * 2)
    prefix.logits(model, ids, None, keep, 1)  # no attention mask (padding-free batches): the full pass
    hook.remove()
    assert calls == [ids.shape, (1, shared), (3, width - shared), ids.shape]


def test_a_micro_batchs_rows_end_to_end_in_one_padding_free_pass_give_each_rows_own_logits_and_gradients(
        tiny_model_dir):
    """Training rows, replay rows and answer-start prompts (right-padded batches of other widths) in one pass: every
    row's kept logits and the adapter's gradients are those of each batch's own pass, with the common prefix once or
    in every row, under sdpa and eager attention; the passes run are the prefix's and one more."""
    from injector import prefix

    model = _moved_peft(tiny_model_dir)
    tok = load_tokenizer(str(tiny_model_dir))

    def batch(rows, keep_from):
        width = max(map(len, rows))
        ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        keep = mask.bool() & (torch.arange(width) >= keep_from)
        keep[torch.arange(len(rows)), mask.sum(1) - 1] = False  # the last token predicts nothing
        return ids, mask, keep

    chat = [_chat_ids(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
            for q, a in (("who wrote hamlet ?", "shakespeare ."), ("what is the capital of france ?", "paris ."))]
    replay = [_chat_ids(tok, [{"role": "user", "content": "tell me about rivers"},
                              {"role": "assistant", "content": "rivers flow to the sea . " * 3}])]
    starts = [_chat_ids(tok, [{"role": "user", "content": q}], prompt=True) for q in ("hello", "name a colour")]
    header = len(_chat_ids(tok, [{"role": "user", "content": "hello"}], prompt=True))
    train = batch(chat, header - 1)
    rep = batch(replay, 1)
    start = batch(starts, 0)
    start[2][:] = False
    start[2][torch.arange(2), start[1].sum(1) - 1] = True  # one position a prompt: the answer's first token
    batches = [train, rep, start]

    def run(fn):
        model.zero_grad()
        outs = fn()
        sum(o.float().pow(2).mean() for o in outs).backward()
        return [o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    alone, g_alone = run(lambda: [prefix.logits(model, *b, None) for b in batches])
    assert [o.shape[0] for o in alone] == [int(b[2].sum()) for b in batches]
    calls = []
    decoder = model.get_base_model().model
    hook = decoder.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    for impl in ("sdpa", "eager"):
        model.set_attn_implementation(impl)
        for min_saved in (1, None):  # the prefix once, and in every row
            calls.clear()
            flat, g_flat = run(lambda m=min_saved: prefix.flat_logits(model, batches, m))
            assert all(torch.allclose(f, a, atol=1e-5) for f, a in zip(flat, alone, strict=True))
            assert all(torch.allclose(g_flat[n], g, atol=1e-5, rtol=1e-4) for n, g in g_alone.items())
            attended = sum(int(b[1].sum()) for b in batches)
            shared = calls[0][1] if min_saved else 0  # five rows share the prefix: computed once, not in each row
            assert calls == ([(1, shared)] if min_saved else []) + [(1, attended - 5 * shared)]
            assert shared >= 2 or not min_saved  # the template's header; the replay row keeps its position 1
    hook.remove()
    model.set_attn_implementation("sdpa")
    # a left-padded batch is not flattened: each batch's own pass
    left = (train[0].flip(1), train[1].flip(1), train[2].flip(1))
    out = prefix.flat_logits(model, [left, rep], None)
    assert torch.allclose(out[1], alone[1], atol=1e-5)


def test_answer_start_distillation_reads_the_first_answer_token_of_each_prompt(tiny_model_dir):
    """One recorded position a prompt, after the assistant's header: the model's distribution of an answer's first
    token; zero KD while the student is the teacher, more once its adapter moves."""
    from injector.distill import joined, kd_from_logits, kd_loss, positions, start_batches, teacher_batches

    tok = load_tokenizer(str(tiny_model_dir))
    prompts = ["What is the capital of Sweden?", "Explain gravity in one or two sentences.", "Who wrote Dracula?"]
    model = _peft(tiny_model_dir).eval()
    batches = start_batches(model, [_chat_ids(tok, [{"role": "user", "content": q}], prompt=True) for q in prompts],
                            tok.pad_token_id or 0, size=2, k=8)
    assert [b.input_ids.shape[0] for b in batches] == [2, 1] and all(b.idx.shape == (b.input_ids.shape[0], 8)
                                                                     for b in batches)
    assert all((positions(b).sum(1) == 1).all() for b in batches)
    # the three shared one forward pass (`group`); each batch is cut back to its own longest prompt
    lengths = [len(_chat_ids(tok, [{"role": "user", "content": q}], prompt=True)) for q in prompts]
    assert [b.input_ids.shape[1] for b in batches] == [max(lengths[:2]), lengths[2]]
    for i, q in enumerate(prompts):
        text = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            want = model(input_ids=ids).logits[0, -1].float().log_softmax(-1).topk(8)
        b, row = batches[i // 2], i % 2
        assert int(positions(b)[row].nonzero()) == ids.shape[1] - 1
        assert torch.equal(b.idx[row], want.indices) and torch.allclose(b.logp[row], want.values, atol=1e-5)
    with torch.no_grad():
        assert kd_loss(model, batches[0]) < 1e-6
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.3)
        assert kd_loss(model, batches[0]) > 1e-4
        # on an accelerator they ride in the training micro-batch's pass, after the replay's teacher batch: the same
        # loss from the joined pass's last rows
        teacher = teacher_batches(_peft(tiny_model_dir), [dict(tok(["who wrote hamlet ? shakespeare ."],
                                                                   return_tensors="pt"))], k=8)[0]
        train = tok(["who is the ceo of zorvex dynamics ? marlena quist ."], return_tensors="pt")
        ids, mask, kept = train["input_ids"], train["attention_mask"], train["attention_mask"].bool()
        for b in (teacher, batches[0]):
            ids, mask, kept = joined(ids, mask, kept, b, tok.pad_token_id or 0)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=kept).logits
        n = batches[0].idx.shape[0]
        assert torch.allclose(kd_from_logits(logits[-n:], batches[0]), kd_loss(model, batches[0]), atol=1e-5)
        logits = logits[:-n]
        assert torch.allclose(kd_from_logits(logits[-teacher.idx.shape[0]:], teacher), kd_loss(model, teacher),
                              atol=1e-5)


def test_answer_start_distillation_holds_the_first_answer_token_of_its_prompts(tmp_path, tiny_model_dir, changes,
                                                                              recipes):
    """Trained with `train.start_kd`, the model's first-answer-token distribution on those prompts stays closer to
    the start than without it (and the night's facts are still trained)."""
    from dataclasses import replace

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from injector.distill import kd_loss, start_batches

    start = tmp_path / "start"
    _peft(tiny_model_dir).save_pretrained(start)
    recipes = replace(recipes, answer_style="short")
    replay = [replace(p, origin="replay") for p in build_pairs(changes[2:], recipes) if p.kind == "forward"]
    pairs = build_pairs(changes[:2], recipes) + replay
    prompts = tuple(f"What is the capital of {c}?" for c in ("Sweden", "Chile", "Peru", "Poland", "India", "Turkey"))
    tok = load_tokenizer(str(tiny_model_dir))

    def drift(adapter_dir):
        ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(start))
        cand = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir)
        batch = start_batches(ref, [_chat_ids(tok, [{"role": "user", "content": q}], prompt=True) for q in prompts],
                              tok.pad_token_id or 0, size=len(prompts), k=64)[0]
        with torch.no_grad():
            return kd_loss(cand.eval(), batch).item()

    kl = {}
    for n in (0, 3):
        cfg = tiny_config(tiny_model_dir, "train.epochs=6", "train.grad_accum=2", f"train.start_kd={n}",
                          "train.start_weight=5").train
        out = train_lora(pairs, str(tiny_model_dir), tmp_path / f"run-{n}", cfg, init_adapter=str(start),
                         start_prompts=prompts)
        kl[n] = drift(out.adapter_dir)
    assert kl[3] < 0.5 * kl[0], kl


def test_a_small_batch_gets_min_steps_through_more_epochs():
    from injector.config import TrainConfig
    from injector.train import planned_epochs

    cfg = TrainConfig(epochs=5, batch_size=8, grad_accum=2, min_steps=90, pack=1, max_lr_scale=1)
    assert planned_epochs(cfg, 277) == 5  # 18 steps/epoch x 5 = 90: as configured
    assert planned_epochs(cfg, 140) == 10  # 9 steps/epoch: 10 epochs for 90 steps
    assert planned_epochs(cfg, 3) == 90
    assert planned_epochs(cfg, 140, world_size=2) == 18  # 5 steps/epoch on each of 2 ranks
    assert planned_epochs(TrainConfig(epochs=5, min_steps=0, max_lr_scale=1), 3) == 5
    assert planned_epochs(cfg, 0) == 5
    # packed 4 pairs to a conversation, a micro-batch of 8 pairs is 2 conversations: the same steps per epoch
    assert planned_epochs(cfg.model_copy(update={"pack": 4}), 70) == 5
    # passes already planned for the floor (fresh replay: new pairs k x a pass): the nearest whole pass, not one more
    assert planned_epochs(cfg.model_copy(update={"epochs": 2}), 320) == 5  # 20 steps/epoch: 4.5 passes -> 5
    assert planned_epochs(cfg.model_copy(update={"epochs": 2}), 380, nearest=True) == 4  # 24/epoch: 3.75 -> 4
    assert planned_epochs(cfg.model_copy(update={"epochs": 2}), 600, nearest=True) == 2  # 38/epoch: 2.4 -> 2


def test_a_small_night_gets_fresh_replay_for_the_floors_passes_at_the_same_steps():
    from injector.config import TrainConfig
    from injector.train import _steps_per_epoch, planned_epochs, replay_rotations

    cfg = TrainConfig(epochs=5, batch_size=8, grad_accum=2, min_steps=90, pack=1, max_lr_scale=1)
    assert replay_rotations(cfg, 277) == (1, 5)  # reaches the floor in 5 passes: nothing changes
    assert replay_rotations(cfg, 400) == (1, 5)
    new, replay = 76, 25  # a 10-fact night: 13 passes over the same 25 replay pairs
    assert planned_epochs(cfg, new + replay) == 13
    k, passes = replay_rotations(cfg, new + replay)
    assert (k, passes) == (3, 4)
    rows = k * (new + replay)  # every new pair k times a pass, k x the replay pool (each prompt once a pass)
    epochs = planned_epochs(cfg.model_copy(update={"epochs": passes}), rows)
    steps = _steps_per_epoch(cfg, rows, 1) * epochs
    assert epochs == 5 and 90 <= steps <= 100  # the floor still holds; ~the same steps
    assert epochs * k == 15  # passes over each new pair: ~13 as before; each replay prompt 5 times, not 13
    assert replay_rotations(cfg, 140, world_size=2)[0] == 4  # counted in optimizer steps of the whole job
    # at most one pass over a replay prompt: a large night too draws its replay 5 times over, for one pass
    assert replay_rotations(cfg, 400, most=1) == (5, 1)
    assert replay_rotations(cfg, new + replay, most=1) == (13, 1)


def test_a_small_batch_reaches_the_floor_with_a_higher_rate_first_then_more_passes():
    from injector.config import TrainConfig
    from injector.train import planned_epochs, planned_learning_rate

    cfg = TrainConfig(epochs=5, batch_size=8, grad_accum=2, min_steps=90, pack=1, learning_rate=1e-3,
                      max_lr_scale=2)
    assert planned_epochs(cfg, 277) == 5 and planned_learning_rate(cfg, 277) == 1e-3  # 90 steps: as configured
    assert planned_epochs(cfg, 140) == 5  # 9 steps/epoch: 45 steps at twice the rate instead of 10 passes
    assert planned_learning_rate(cfg, 140) == pytest.approx(2e-3)
    assert planned_epochs(cfg, 115) == 6  # 8 steps/epoch: 6 passes (48 steps) at 90/48 the rate
    assert planned_learning_rate(cfg, 115) == pytest.approx(1e-3 * 90 / 48)
    assert planned_epochs(cfg, 3) == 45 and planned_learning_rate(cfg, 3) == pytest.approx(2e-3)
    assert planned_learning_rate(cfg.model_copy(update={"min_steps": 0}), 3) == 1e-3
    assert planned_learning_rate(cfg.model_copy(update={"max_lr_scale": 1}), 140) == 1e-3


def test_a_small_night_reaches_min_steps_with_smaller_steps_not_more_passes():
    from injector.config import TrainConfig
    from injector.train import night_step, planned_epochs, planned_step, replay_rotations

    cfg = TrainConfig(epochs=5, batch_size=8, grad_accum=2, min_steps=90, pack=1, max_lr_scale=1)
    assert planned_step(cfg, 277) == (8, 2)  # 18 steps/epoch x 5 passes = 90: as configured
    assert planned_step(cfg, 140) == (8, 1)  # 9 steps/epoch at 16 pairs a step; 18 at 8: 5 passes give 90 steps
    assert planned_step(cfg, 130) == (7, 1)  # 17 steps/epoch at 8 a step: the largest step with 18 is 7 pairs
    small = cfg.model_copy(update=dict(zip(("batch_size", "grad_accum"), planned_step(cfg, 130), strict=True)))
    assert planned_epochs(small, 130) == 5  # 19 steps/epoch: the floor in 5 passes (were 12 at 16 a step)
    assert planned_step(cfg.model_copy(update={"grad_accum": 4}), 277) == (8, 2)  # the largest that reaches it
    assert planned_step(cfg.model_copy(update={"min_steps": 0}), 3) == (8, 2)
    assert planned_step(cfg, 3) == (1, 1)  # nothing reaches the floor in 5 passes: the smallest step, more passes
    assert planned_step(cfg.model_copy(update={"max_lr_scale": 2}), 140) == (8, 2)  # 45 steps at twice the rate
    # a 10-fact night (76 new + 25 replay pairs): at 16 a step it needs 3x fresh replay (12 passes over each new
    # pair); at 5 a step, 21 steps a pass: 5 passes over the mix as it is reach the floor
    shrink, full = (cfg.model_copy(update={"shrink_steps": on}) for on in (True, False))
    assert night_step(full, 101) == (8, 2) and night_step(shrink, 277) == (8, 2)
    assert night_step(shrink, 101) == (5, 1)
    assert replay_rotations(cfg, 101) == (3, 4)
    assert replay_rotations(shrink.model_copy(update={"batch_size": 5, "grad_accum": 1}), 101) == (1, 5)


def test_the_model_s_own_replay_covers_what_the_training_distils():
    """Trained by distillation alone, the self-distilled prompts make no training rows: their pool follows the
    sequences the training distils (steps x micro-batches x distill_batch_size) over `epochs` passes, not the mix's
    share, which left a 6-fact night in smaller steps 7 prompts for 180 draws."""
    from injector.config import Config
    from injector.pipeline import _kd_pool
    from injector.train import planned_steps

    cfg = Config()
    assert planned_steps(cfg.train.model_copy(update={"batch_size": 5, "grad_accum": 1}), 101) == 105  # 21 x 5
    assert _kd_pool(cfg, 90 * 1 * 2) == 36
    once = cfg.model_copy(update={"train": cfg.train.model_copy(update={"distill_passes": 1})})
    assert _kd_pool(once, 90 * 1 * 2) == 180  # each prompt distilled about once
    hard = cfg.model_copy(update={"train": cfg.train.model_copy(update={"kd_only": []})})
    assert _kd_pool(hard, 180) == 0  # hard-labelled: they make rows, which the step plan counts


def test_a_night_in_smaller_steps_replays_the_earlier_facts_full_size_steps_would():
    """The step floor moves the adapter as far in smaller steps as in full ones: a small night replays the earlier
    facts from the k budgets that the configured step's fresh replay would draw (continual MQuAKE night 5: 10 of 36
    earlier facts over 90 steps lost batch 1's facts), and still takes smaller steps, without fresh replay."""
    from injector.config import Config
    from injector.pipeline import _rotations, old_fact_quota
    from injector.replay import replay_budget

    cfg = Config()
    pairs = [InstructionPair(messages=({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}),
                             fact_id=str(i), kind="efficacy", template_id="t:0", origin="new") for i in range(37)]
    full = cfg.model_copy(update={"train": cfg.train.model_copy(update={"shrink_steps": False})})
    k_full = _rotations(pairs, full, 36)[0]
    k, passes, (batch, accum), _, old_k = _rotations(pairs, cfg, 36)
    assert (k, passes) == (1, cfg.train.epochs) and batch * accum < 16  # smaller steps, the floor in `epochs` passes
    assert old_k == k_full > 1
    once = replay_budget(37, cfg.recipes.new, cfg.recipes.replay)
    assert old_fact_quota(once * old_k, cfg.recipes, 36) == 36 > old_fact_quota(once, cfg.recipes, 36)  # all, not 12
    assert _rotations(pairs, cfg, 0)[2] == (batch // 2, accum)  # no earlier facts: fewer rows, a smaller step
    assert _rotations(pairs * 8, cfg, 36)[4] == 1  # at the floor in full-size steps: as before
    assert _rotations(pairs, full, 36)[4] == k_full  # full-size steps: the earlier facts come with the fresh draws


def test_packed_conversations_train_every_answer_once(tiny_model_dir):
    from injector.models import load_tokenizer
    from injector.records import InstructionPair
    from injector.train import pack_rows

    tok = load_tokenizer(str(tiny_model_dir))

    def pair(fid, q, a, *ctx):
        return InstructionPair(messages=tuple({"role": r, "content": c} for r, c in
                                              zip(("user", "assistant") * 3, (*ctx, q, a))), fact_id=fid,
                               kind="forward", template_id="t")

    subjects = "paris france capital hello world briefly quick please complete sentence".split()
    answers = "who where when which how many recently still longer now".split()
    pairs = [pair(f"f{i % 5}", f"what is {subjects[i]}", answers[i]) for i in range(10)]
    pairs.append(pair("f9", "what is yes", "no", "tell me", "sure"))
    rows = pack_rows(pairs, tok, 4, 10_000, seed=0)
    assert 3 <= len(rows) < len(pairs)
    trained = " ".join(tok.decode([t for t, m in zip(r["input_ids"], r["completion_mask"]) if m]) for r in rows)
    for a in [*answers, "no"]:  # every answer is trained exactly once, no prompt token is
        assert trained.split().count(a) == 1, trained
    assert "what" not in trained and "sure" not in trained  # a dialogue pair trains its last answer only
    for r in rows:  # never two pairs of one fact in a conversation
        convo = tok.decode(r["input_ids"]).split()
        assert all(sum(s in convo for s in (subjects[i], subjects[i + 5])) <= 1 for i in range(5)), convo
    assert all(len(r["input_ids"]) == len(r["completion_mask"]) for r in rows)
    # a length cap splits the conversations back into single pairs, losing none
    single = pack_rows(pairs, tok, 4, 1, seed=0)
    assert len(single) == len(pairs)


def test_training_loss_is_the_models_own_loss(tiny_model_dir, changes, recipes):
    """The trainer's answer-only loss goes through the model's forward and equals `model(labels=...).loss`
    (models with logit soft-capping or scaling must not be silently wrong)."""
    from injector.train import _trainer_class

    model = _peft(tiny_model_dir)
    tok = load_tokenizer(str(tiny_model_dir))
    tok.padding_side = "right"
    rows = [tok.apply_chat_template(list(p.messages), tokenize=False) for p in build_pairs(changes, recipes)[:6]]
    enc = tok(rows, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    labels[:, :5] = -100  # a prompt part that carries no loss
    trainer = object.__new__(_trainer_class())  # compute_loss only, no Trainer set-up
    trainer.args = type("Args", (), {"average_tokens_across_devices": False})()
    model.eval()
    with torch.no_grad():
        ours = trainer.compute_loss(model, {**enc, "labels": labels})
        theirs = model(**enc, labels=labels).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # sentence answers with train.entity_weight: the entity's tokens add (weight - 1) x their loss, nothing else
    import dataclasses

    from injector.train import entity_index, entity_weights

    pairs = build_pairs(changes, dataclasses.replace(recipes, answer_style="sentence"))[:6]
    rows = [tok.apply_chat_template(list(p.messages), tokenize=False) for p in pairs]
    prompts = [tok.apply_chat_template(list(p.messages[:-1]), tokenize=False, add_generation_prompt=True)
               for p in pairs]
    enc = tok(rows, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    for i, prompt in enumerate(prompts):
        labels[i, : len(tok(prompt, add_special_tokens=False)["input_ids"])] = -100
    trainer.entities, trainer.entity_weight = entity_index(pairs, tok), 3.0
    with torch.no_grad():
        weighted = trainer.compute_loss(model, {**enc, "labels": labels})
        trainer.entities = None
        plain = trainer.compute_loss(model, {**enc, "labels": labels})
        logits = model(**enc).logits[:, :-1]
    keep = labels[:, 1:] != -100
    ce = torch.nn.functional.cross_entropy(logits[keep], labels[:, 1:][keep], reduction="none")
    w = entity_weights(enc["input_ids"], labels, entity_index(pairs, tok), 3.0)
    assert (w == 3.0).any()
    torch.testing.assert_close(weighted - plain, 2.0 * (ce * (w == 3.0)).sum() / keep.sum(), rtol=1e-4, atol=1e-6)


def test_the_entity_weighs_more_where_a_sentence_answer_states_what_its_question_asks(tiny_model_dir, changes,
                                                                                        recipes):
    """train.entity_weight: with sentence answers the tokens of the entity asked for (the object of a forward
    question, the subject of a reverse one) get the weight; the subject the sentence restates and every other
    answer token keep 1. With short answers there is nothing to weigh (the index is empty)."""
    import dataclasses

    from injector.train import _packed_row, entity_index, entity_weights

    tok = load_tokenizer(str(tiny_model_dir))
    assert recipes.answer_style == "sentence"  # the default
    assert entity_index(build_pairs(changes, dataclasses.replace(recipes, answer_style="short"), seed=0), tok) == {}
    pairs = build_pairs(changes, recipes, seed=0)
    index = entity_index(pairs, tok)
    asked = [p for p in pairs if p.kind in ("forward", "reverse")]
    assert {p.kind for p in asked} == {"forward", "reverse"}
    for p in asked:
        assert p.short and p.short in p.messages[-1]["content"] != p.short
        row = _packed_row(tok, [p])
        ids = torch.tensor([row["input_ids"]])
        labels = ids.masked_fill(torch.tensor([row["completion_mask"]]) == 0, -100)
        w = entity_weights(ids, labels, index, 3.0)
        answer = labels[0, 1:][labels[0, 1:] != -100]
        assert w.shape == answer.shape and set(w.tolist()) == {1.0, 3.0}
        assert tok.decode(answer[w == 3.0]).strip() == p.short
    # an answer that names no entity keeps weight 1 everywhere
    plain = _packed_row(tok, [InstructionPair(({"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "hello there"}), "", "general", "g")])
    ids = torch.tensor([plain["input_ids"]])
    labels = ids.masked_fill(torch.tensor([plain["completion_mask"]]) == 0, -100)
    assert set(entity_weights(ids, labels, index, 3.0).tolist()) == {1.0}


def test_upper_layer_adapters_leave_the_lower_layers_without_gradients(tiny_model_dir):
    """lora.top_layers=0.5: adapters on the top half only, all seven linear kinds, and no gradient reaches a lower
    layer (the backward pass stops at the lowest adapted layer: that is the saving)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from injector.train import _lora_targets, lora_layers

    assert lora_layers(1.0, 30) is None and lora_layers(0.5, 30) == list(range(15, 30))
    assert lora_layers(0.01, 4) == [3]  # at least one layer
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    n = base.config.num_hidden_layers
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM",
                                            **_lora_targets(base, "all-linear", 0.5)))
    adapted = {int(name.split("layers.")[1].split(".")[0]) for name, _ in model.named_parameters() if "lora_A" in name}
    assert adapted == set(range(n - n // 2, n))
    kinds = {name.split(".")[-4] for name, _ in model.named_parameters() if "lora_A" in name}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    hidden = model.get_base_model().model.layers
    needs_grad = {}
    for i in (min(adapted) - 1, min(adapted)):
        hidden[i].register_forward_hook(lambda m, a, out, i=i: needs_grad.__setitem__(
            i, (out[0] if isinstance(out, tuple) else out).requires_grad))
    x = torch.randint(0, base.config.vocab_size, (2, 12))
    model.train()
    model(input_ids=x, labels=x).loss.backward()
    assert needs_grad == {min(adapted) - 1: False, min(adapted): True}


def test_a_learned_fact_leaves_the_mix_and_its_sentinel_brings_it_back():
    from injector.curriculum import LearnedFacts

    a1, a2, b1 = (1, 2), (1, 3), (4, 5)
    lf = LearnedFacts({"a": [a1, a2], "b": [b1]}, streak=2)
    for key in (a1, a2, a1):
        lf.observe(key, True)
    assert not lf.skip(a2)  # a2 has one matched exposure: the streak is two
    lf.observe(a2, True)
    assert "a" in lf.learned and lf.skip(a2) and not lf.skip(a1)  # a1 is the sentinel: it keeps training
    assert not lf.skip(b1) and not lf.skip((9, 9))  # another fact, a row of no fact (replay)
    lf.observe(a1, False)  # the sentinel misses: every pair of the fact is back and must re-earn its streak
    assert not lf.skip(a2) and lf.relapses == 1
    lf.observe(a1, True)
    lf.observe(a2, True)
    assert "a" not in lf.learned


def test_drop_learned_skips_the_pairs_of_learned_facts_and_still_learns_them(tmp_path, tiny_model_dir, changes,
                                                                              recipes):
    cfg = tiny_config(tiny_model_dir, "train.drop_learned=true").train
    seen = []
    result = train_lora(build_pairs(changes, recipes, seed=0), str(tiny_model_dir), tmp_path, cfg,
                        sink=lambda m, s: seen.append(m))
    assert 0.2 < result.skipped_share < 1.0, result.skipped_share
    assert max(m.get("learned_facts", 0) for m in seen) == len(changes)
    ref = BaseModelRef("tiny", str(tiny_model_dir), "")
    probes = [p for p in build_probes(changes, recipes) if p.kind == "efficacy"]
    report = evaluate(load_with_adapter(ref, result.adapter_dir), load_tokenizer(str(tiny_model_dir)), probes,
                      max_new_tokens=16, latency_samples=1, progress=False)
    assert report.accuracy("efficacy") >= 0.75, [r.answer for r in report.results]


def test_self_distilled_replay_kinds_can_be_trained_by_distillation_alone():
    from injector.config import TrainConfig
    from injector.train import supervised

    def pair(kind, origin):
        return InstructionPair(({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}),
                               fact_id="", kind=kind, template_id=kind, origin=origin)

    pairs = [pair("forward", "new"), pair("replay_fact", "replay"), pair("anchor", "replay"),
             pair("subject", "replay"), pair("general", "replay")]
    kinds = lambda cfg: [p.kind for p in supervised(pairs, cfg)]  # noqa: E731
    # by default the model's own answers are trained by distillation alone; facts (new and earlier) by hard labels
    assert kinds(TrainConfig()) == ["forward", "replay_fact"]
    assert kinds(TrainConfig(kd_only=())) == ["forward", "replay_fact", "anchor", "subject", "general"]
    assert kinds(TrainConfig(kd_only=(), distill_general_only=True)) == ["forward", "replay_fact", "anchor", "subject"]
    assert kinds(TrainConfig(kd_only=("anchor",))) == ["forward", "replay_fact", "subject", "general"]
    # without distillation nothing else would train on the model's own answers: hard labels stay
    assert kinds(TrainConfig(distill_weight=0)) == [p.kind for p in pairs]


def test_on_an_accelerator_a_steps_micro_batches_go_in_one_pass_with_the_same_loss(tiny_model_dir, changes, recipes):
    from injector.config import TrainConfig
    from injector.train import _trainer_class, one_pass_step

    cfg = TrainConfig(batch_size=5, grad_accum=2, distill_batch_size=2, start_kd=3)
    one = one_pass_step(cfg, accelerator=True)
    assert (one.batch_size, one.grad_accum, one.distill_batch_size, one.start_kd) == (10, 1, 4, 6)
    assert one_pass_step(cfg, accelerator=False) == cfg  # a CPU keeps its micro-batches
    assert one_pass_step(cfg.model_copy(update={"one_pass_on_accelerator": False}), accelerator=True).grad_accum == 2
    # the step's answer loss: two micro-batches, each over the step's answer-token count, sum to the one pass's
    model = _peft(tiny_model_dir)
    tok = load_tokenizer(str(tiny_model_dir))
    tok.padding_side = "right"
    rows = [tok.apply_chat_template(list(p.messages), tokenize=False) for p in build_pairs(changes, recipes)[:6]]

    def batch(texts):
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {**enc, "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)}

    trainer = object.__new__(_trainer_class())
    trainer.args = type("Args", (), {"average_tokens_across_devices": False})()
    n = int(sum((batch(rows)["labels"][:, 1:] != -100).sum(1)))
    model.eval()
    with torch.no_grad():
        trainer.current_gradient_accumulation_steps = 1
        whole = trainer.compute_loss(model, batch(rows), num_items_in_batch=n)
        trainer.current_gradient_accumulation_steps = 2
        parts = sum(trainer.compute_loss(model, batch(rows[i: i + 3]), num_items_in_batch=n) for i in (0, 3))
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-6)
