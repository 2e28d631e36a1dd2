"""The recipes behind `injector ingest` and `injector train`, top to bottom (torchtune style).

ingest -> diff -> ledger;  pending facts -> recipes -> train -> evaluate -> gate -> register -> ledger.
Each step calls one stage module; typed records cross the boundaries.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from injector import registry
from injector.config import Config
from injector.errors import EXIT_NOT_PROMOTED, EXIT_OK, InjectorError
from injector.gate import decide, load_thresholds, metrics_of
from injector.home import Home
from injector.ingest import Batch, read_batch, write_quarantine
from injector.ledger import Diff, Ledger
from injector.lock import single_flight
from injector.probes import read_questions
from injector.recipes import humanise
from injector.records import EvalReport, GateDecision, TrainResult
from injector.replay import model_key, retention_probes
from injector.timing import collecting, timed
from injector.train import EwcSpec, fingerprint


@dataclass(frozen=True)
class IngestOutcome:
    batch: Batch
    diff: Diff
    snapshot_id: int | None  # None: nothing was recorded (no-op)
    quarantine: str | None
    noop: bool

    def summary(self) -> dict:
        b = self.batch
        return {"read": b.read, "accepted": len(b.triples), "rejected": len(b.rejected), "duplicates": b.duplicates,
                "conflicts": b.conflicts, "labels": b.labels, **self.diff.counts(),
                "unknown_retractions": self.diff.unknown_retractions,
                "deferred_retractions": self.diff.deferred_retractions, "unidentified_rejects": b.unidentified,
                "refused_files": [list(x) for x in b.refused_files], "quarantine": self.quarantine,
                "content_hash": b.content_hash, "snapshot": self.snapshot_id, "noop": self.noop}


@dataclass(frozen=True)
class TrainOutcome:
    ingest: IngestOutcome | None
    before: EvalReport | None = None
    after: EvalReport | None = None
    train: TrainResult | None = None
    decision: GateDecision | None = None
    version: str | None = None
    promoted: bool = False
    previous_champion: str | None = None
    run_id: str | None = None
    wall_s: float = 0.0
    stage_s: dict = field(default_factory=dict)
    peak_gpu_mib: float | None = None  # peak allocated GPU memory of the night (None on the CPU)
    part_s: dict = field(default_factory=dict)  # parts of the stages: replay self-distillation, teacher pass, ...

    @property
    def noop(self) -> bool:
        return self.version is None

    @property
    def exit_code(self) -> int:
        """0: promoted or nothing to do; EXIT_NOT_PROMOTED: a version was registered but the gate refused it."""
        return EXIT_OK if self.noop or self.promoted else EXIT_NOT_PROMOTED


def run_ingest(paths: list[Path], cfg: Config, home: Home, log=print, locked: bool = False) -> IngestOutcome:
    """Read, validate, diff against the ledger and record the snapshot (all or nothing)."""
    home.ensure()
    if not locked:
        with single_flight(home.root, "injector ingest"):
            return _ingest(paths, cfg, home, log)
    return _ingest(paths, cfg, home, log)


def _ingest(paths: list[Path], cfg: Config, home: Home, log) -> IngestOutcome:
    from injector.recipes import load_recipes

    recipes = load_recipes(cfg.content_path(cfg.recipes.dir), cfg.recipes.language)
    batch = read_batch(paths, recipes.single_valued, cfg.ingest.mode, cfg.ingest.language,
                       cfg.ingest.max_field_length, recipes.canonical)
    for f, why in batch.refused_files:
        log(f"  refused file {f}: {why}")
    quarantine = write_quarantine(batch, home.quarantine, paths)
    assert batch.read == len(batch.triples) + len(batch.rejected) + batch.duplicates  # every record accounted for
    log(f"read {batch.read} = accepted {len(batch.triples)} + rejected {len(batch.rejected)} + duplicates "
        f"{batch.duplicates}" + (f" (conflicting groups: {batch.conflicts})" if batch.conflicts else ""))
    for r in batch.rejected[:20]:
        log(f"  rejected {r.where}: {r.reason}")
    if len(batch.rejected) > 20:
        log(f"  ... and {len(batch.rejected) - 20} more in {quarantine}")
    if batch.read and batch.rejected_fraction > cfg.ingest.max_reject_fraction:
        err = InjectorError(f"{batch.rejected_fraction:.0%} of the records were rejected (limit "
                            f"{cfg.ingest.max_reject_fraction:.0%}, ingest.max_reject_fraction): stopped before "
                            f"training; see {quarantine}")
        err.summary = {"read": batch.read, "accepted": len(batch.triples), "rejected": len(batch.rejected),
                       "duplicates": batch.duplicates, "quarantine": str(quarantine) if quarantine else None}
        raise err
    ledger = Ledger(home.ledger)
    try:
        last = ledger.last_snapshot()
        diff = ledger.diff(batch, cfg.ingest.mode, recipes.single_valued)
        _check_retractions(diff, cfg, paths)
        if diff.deferred_retractions:
            log(f"snapshot: {diff.deferred_retractions} facts absent from the drop are kept active: "
                f"{batch.unidentified} rejected records could not be read, and any of them may have named those "
                "facts (fix them and ingest the snapshot again)")
        if diff.empty:
            same = last is not None and last["content_hash"] == batch.content_hash
            log("no-op: " + ("the same input as the last snapshot" if same else "nothing added, changed or retracted"))
            return IngestOutcome(batch, diff, None, str(quarantine) if quarantine else None, True)
        snap = ledger.commit(batch, diff, cfg.ingest.mode, ", ".join(map(str, paths)),
                             str(quarantine) if quarantine else None)
    finally:
        ledger.close()
    log("diff: " + ", ".join(f"{k} {v}" for k, v in diff.counts().items()) + f" (snapshot {snap})")
    if diff.retracted:
        log(f"retracted {len(diff.retracted)}: marked in the ledger; they leave replay and retention probes from "
            "the next training on (training does not unlearn them; the champion keeps serving)")
    return IngestOutcome(batch, diff, snap, str(quarantine) if quarantine else None, False)


def _check_retractions(diff: Diff, cfg: Config, paths: list[Path]) -> None:
    """A snapshot that would retract a large share of the ledger is far more often an empty or truncated export
    than a real mass retraction: stop before committing and say so."""
    if cfg.ingest.mode != "snapshot" or not diff.active_before:
        return
    share = len(diff.retracted) / diff.active_before
    if share > cfg.ingest.max_retract_fraction:
        raise InjectorError(
            f"snapshot {', '.join(map(str, paths))} would retract {len(diff.retracted)} of {diff.active_before} "
            f"active facts ({share:.0%} > ingest.max_retract_fraction {cfg.ingest.max_retract_fraction:.0%}): "
            "stopped before committing (an empty or truncated export?); for a real mass retraction pass "
            "--allow-mass-retraction")


def _flat(prefix: str, obj) -> dict:
    out = {}
    for k, v in (obj.items() if isinstance(obj, dict) else []):
        key = f"{prefix}{k}"
        out.update(_flat(f"{key}.", v) if isinstance(v, dict) else {key: v})
    return out


@dataclass(frozen=True)
class Plan:
    """Everything decided before training: the facts, the data, the probes and the reference's answers."""

    changes: tuple
    pairs: tuple
    probes: tuple
    statements: tuple[str, ...]
    base: object  # models.BaseModelRef
    current: str | None  # the champion version the candidate will be gated against
    init_adapter: str | None
    before: EvalReport
    run_dir: Path
    triples: tuple[str, ...] = ()
    new_repeats: int = 1  # the new pairs per pass, beside a replay pool that many times the mix's (fresh_replay)
    passes: int | None = None  # over the night's rows (new pairs repeated); None: train.epochs
    step: tuple[int, int] | None = None  # (batch_size, grad_accum) planned (train.night_step); None: the config's
    start_prompts: tuple[str, ...] = ()  # short prompts whose first answer token is distilled (train.start_kd)


def plan_candidate(cfg: Config, home: Home, log=print, triples: list[Path] | None = None,
                   resume: bool = False, base=None) -> Plan | None:
    """Pending facts -> pairs (with replay) and probes; the reference (champion or base) answers them first."""
    from injector.evaluate import evaluate
    from injector.models import load_tokenizer, load_with_adapter, resolve_base
    from injector.recipes import build_pairs, build_probes, load_phrasings, load_recipes, statement_of
    from injector.replay import known_wordings, neighbourhood_probes

    ledger = Ledger(home.ledger)
    try:
        changes = ledger.pending()  # new and changed facts, and any an earlier run failed to get promoted
        earlier = ledger.learned(exclude={c.triple.id for c in changes})
    finally:
        ledger.close()
    if not changes:
        log("no-op: no pending facts to train; no new model version")
        return None
    with timed("recipes"):
        recipes = load_recipes(cfg.content_path(cfg.recipes.dir), cfg.recipes.language)
        pairs = build_pairs(changes, recipes, seed=cfg.train.seed)
        eval_dir = cfg.content_path(cfg.eval.dir)
        probes = build_probes(changes, recipes, load_phrasings(eval_dir / f"phrasings.{cfg.recipes.language}.yaml"))
        probes += retention_probes(earlier, recipes, cfg.eval.retention_samples, cfg.train.seed)
        near, held = _subject_neighbourhood(changes, earlier, recipes, cfg)
        if cfg.eval.neighbourhood:
            probes += neighbourhood_probes([c.triple for c in changes], held, recipes)
        if cfg.eval.locality:
            probes += read_questions(eval_dir / f"locality.{cfg.recipes.language}.jsonl",
                                     default_kind="locality")

    base = base or resolve_base(cfg.model.base, home.models)
    registry.connect(home)
    current = registry.champion()
    init_adapter = None
    if current and cfg.train.init == "champion":
        if registry.version_tags(current).get("base_sha256") == base.sha256:
            init_adapter, _ = registry.fetch_adapter(current, home.adapters)
        else:
            log(f"champion v{current} was trained on another base model; starting from the base")
    tokenizer = load_tokenizer(base.path)
    reference = load_with_adapter(base, init_adapter, cfg.model.quantization)
    ref_key = model_key(base.sha256, current if init_adapter else None)
    known = _load_answers(home, ref_key, cfg)  # the reference's general-knowledge answers, judged the night before
    if known:
        log(f"reusing {sum(p.question in known for p in probes)} cached reference answers ({ref_key})")
    with timed("reference_eval"):
        if cfg.train.triage:
            known = {**known, **_trained_phrasing_first(reference, tokenizer, probes, cfg, log)}
        before = evaluate(reference, tokenizer, probes, cfg.eval.max_new_tokens, cfg.eval.batch_size,
                          latency_samples=0, known=known)  # timed beside the candidate (judge_candidate)
    _save_answers(home, ref_key, cfg, before)
    triaged: list = []  # facts the reference already answers: recorded as known, not trained
    if cfg.train.triage:
        changes, pairs, before, triaged = _triage(changes, pairs, before, home, current if init_adapter else None, log)
        # the known facts are the batch's closest neighbourhood (often the same relations about real subjects, in
        # the model's own answers): they join the earlier facts that replay draws from, neighbours first
        earlier = earlier + triaged
        if not changes:
            log("no-op: the serving model already answers every pending fact; recorded as known, nothing to train")
            return None
    if cfg.recipes.model_sentences and recipes.answer_style == "sentence" and any(c.triple.question for c in changes):
        with timed("model_sentences"):
            pairs = _model_sentences(changes, pairs, recipes, reference, tokenizer, cfg, log)
    if cfg.recipes.model_paraphrases:
        with timed("model_paraphrases"):
            pairs = pairs + _model_paraphrases(changes, recipes, reference, tokenizer, cfg, log)
    known_ids = {t.id for t in triaged}
    k, passes, step, draws, old_k = _rotations(pairs, cfg, len(earlier), known_wordings(earlier, known_ids, recipes))
    with timed("replay_self_distill"):
        replay = _replay(pairs, changes, earlier, recipes, cfg, reference, tokenizer, home, base.sha256,
                         current if init_adapter else None, (near, held), k,
                         tuple(p.question for p in probes if p.kind == "locality"), _kd_pool(cfg, draws), old_k,
                         known_ids)
    # the pools may hold fewer prompts than k budgets: the new pairs repeat as often as the replay was drawn, over
    # the same k x passes exposures
    once = _replay_budget(pairs, cfg)
    rotations = min(k, max(1, round(len(replay) / once))) if replay and once else 1
    passes = max(1, round(k * passes / rotations)) if rotations > 1 else None
    pairs += replay
    if rotations > 1:
        log(f"fresh replay for the passes: {rotations}x the mix's replay, each new pair {rotations}x per pass, "
            f"{passes} passes (each replay prompt ~{passes}x)")
    if replay:
        old = [p for p in replay if p.kind == "replay_fact"]
        log(f"replay: {len({p.fact_id for p in old})} earlier facts in {len(old)} pairs "
            f"({len({p.fact_id for p in old} & known_ids)} of them triaged as known tonight, in "
            f"{sum(p.fact_id in known_ids for p in old)} wordings), {sum(p.kind == 'anchor' for p in replay)} anchors, "
            f"{sum(p.kind == 'subject' for p in replay)} neighbourhood questions (the subjects' other relations, the "
            f"questions about other subjects, the objects' relations), "
            f"{sum(p.kind == 'general' for p in replay)} general prompts (instructions, everyday-knowledge questions)"
            + (f"; {', '.join(sorted(cfg.train.kd_kinds))} by logit distillation alone" if cfg.train.kd_kinds else ""))
    generated = sorted({humanise(c.triple.predicate) for c in changes
                        if not c.triple.question and recipes.generated(c.triple.predicate)})
    if generated:
        log(f"{len(generated)} predicates have no recipe; their templates are generated from the label: "
            + ", ".join(generated[:20]) + (" ..." if len(generated) > 20 else ""))
    n_new = sum(p.origin == "new" and p.kind != "dev" for p in pairs)
    log(f"{len(changes)} facts to inject: {n_new} new + {sum(p.origin == 'replay' for p in pairs)} replay pairs, "
        f"{len(before.results)} probes")
    probes = [r.probe for r in before.results]
    statements = [statement_of(c.triple, recipes) for c in changes]
    with timed("reference_ppl"):
        before = replace(before, extra=_measure(reference, tokenizer, cfg, home, statements, ref_key))
    if init_adapter and any(p.kind == "locality" for p in probes):
        with timed("base_reference"):
            before = replace(before, extra={**before.extra, **_base_reference(home, base, tokenizer, cfg, probes, log)})
    return Plan(tuple(changes), tuple(pairs), tuple(probes), tuple(statements), base, current, init_adapter, before,
                _run_dir(home, resume), tuple(map(str, triples or ())), rotations, passes, step,
                _start_prompts(cfg, probes))


def _start_prompts(cfg: Config, probes) -> tuple[str, ...]:
    """The prompts of answer-start distillation (`train.start_kd`): the general instructions, but no locality probe;
    none where it, distillation or the general replay is off. No anchor question: an anchor asks a question of the
    facts' own form, so distilling its first token holds the starting model where the night changes it (a bare
    entity's first token is the entity; a relation's anchors are its facts' held-out phrasings asked of other
    subjects). Measured against anchors in (docs/BENCHMARKS.md, stops 28-29), the general instructions alone read
    as well or better on every night."""
    if not cfg.train.start_kd or not cfg.train.start_weight or cfg.train.distill_weight <= 0 \
            or not cfg.recipes.general_replay:
        return ()
    locality = {p.question for p in probes if p.kind == "locality"}
    return tuple(p for _, p in _general_prompts(cfg, knowledge=False) if p not in locality)


def _general_prompts(cfg: Config, knowledge: bool = True) -> list[tuple[str, str]]:
    """The general prompts replayed in the model's own answers: the general instructions
    (`data_recipes/general_prompts.<language>.jsonl`, also the answer-start prompts) and, with `knowledge` and
    `recipes.knowledge_replay`, the everyday-knowledge questions (`knowledge_prompts.<language>.jsonl`, optional):
    short quiz questions on what the locality probes ask about (planets, organs, units, inventors), never the
    probes' own facts. `knowledge=False` for the answer-start prompts: the quiz asks short questions in a fact's
    own form, as anchor questions do, and anchors among the starts cost held-out paraphrases (stops 28-29); the
    quiz was not measured there."""
    from injector.replay import load_prompts

    d, lang = cfg.content_path(cfg.recipes.dir), cfg.recipes.language
    prompts = load_prompts(d / f"general_prompts.{lang}.jsonl")
    quiz = d / f"knowledge_prompts.{lang}.jsonl"
    return prompts + load_prompts(quiz) if knowledge and cfg.recipes.knowledge_replay and quiz.exists() else prompts


def _replay_budget(pairs, cfg: Config) -> int:
    """The mix's replay pairs for these new pairs (`recipes.new`:`recipes.replay`)."""
    from injector.replay import replay_budget

    return replay_budget(sum(p.kind != "dev" for p in pairs), cfg.recipes.new, cfg.recipes.replay)


def _rotations(pairs, cfg: Config, n_earlier: int,
               rows: int | None = None) -> tuple[int, int, tuple[int, int], int, int]:
    """(k, passes, step, draws, old_k): `train.replay_rotations` for this night's new pairs at the mix (k = 1
    without `recipes.fresh_replay`), in optimizer steps of `train.night_step` (batch_size, grad_accum: with
    `train.shrink_steps` a small night reaches the step floor with smaller steps first), the replay sequences the
    training will distil (`train.planned_steps` x micro-batches a step x `distill_batch_size`), and the replay
    budgets the earlier facts are drawn from (`old_k`). The pairs counted are those trained with hard labels (the
    steps a pass takes): the replay budget, or where the model's own answers are trained by distillation alone
    (`train.kd_only`) the earlier facts' part of it: up to `rows` pairs (`replay.known_wordings`; `n_earlier`).

    `old_k` is the k of the configured step, whatever step the night takes: the step floor moves the adapter as far
    in smaller steps as in full ones, so the earlier facts it puts at risk are replayed as the full-step plan's k
    fresh draws would have replayed them (continual MQuAKE night 5, 5 facts: 10 of 36 earlier facts replayed over
    90 steps, batch-1 accuracy 1.00 -> 0.85)."""
    from injector import distributed
    from injector.train import night_step, planned_steps, replay_rotations

    r, world = cfg.recipes, distributed.from_env().world
    budget = _replay_budget(pairs, cfg) if r.replay else 0
    own_kd = _own_answers_kd_only(cfg) and budget
    new = sum(p.kind != "dev" for p in pairs)

    def hard(rotations: int) -> int:  # every self-distilled kind by distillation alone: only earlier facts make rows
        return min(n_earlier if rows is None else rows, old_fact_quota(budget * rotations, r, n_earlier)) \
            if own_kd else budget

    fresh = r.fresh_replay and r.replay
    old_k = 1  # with full-size steps the earlier facts come with the k fresh draws below
    if fresh and own_kd and cfg.train.shrink_steps:
        old_k = replay_rotations(cfg.train, new + hard(1), world, r.replay_passes)[0]
    n = new + hard(old_k)
    batch, accum = step = night_step(cfg.train, n, world)
    sized = cfg.train.model_copy(update={"batch_size": batch, "grad_accum": accum})
    k, passes = replay_rotations(sized, n, world, r.replay_passes) if fresh else (1, None)
    steps = planned_steps(sized, n * k, world, passes, nearest=k > 1)
    return k, passes or cfg.train.epochs, step, steps * accum * cfg.train.distill_batch_size * world, max(k, old_k)


def _kd_pool(cfg: Config, draws: int) -> int:
    """The self-distilled replay prompts a night needs where they are trained by distillation alone: the
    sequences its training distils (`draws`) over `train.epochs` passes, so that no prompt is distilled much more
    than a new pair is trained. The mix's share alone gave a 6-fact night in smaller steps 7 prompts for 180
    draws (MQuAKE continual night 5: locality 0.891 of the champion). 0 where they make training rows."""
    return math.ceil(draws / (cfg.train.distill_passes or cfg.train.epochs)) if _own_answers_kd_only(cfg) else 0


def _own_answers_kd_only(cfg: Config) -> bool:
    """The model's own replay answers are drawn and every kind of them is trained by distillation alone (no rows)."""
    from injector.config import SELF_DISTILLED

    return cfg.recipes.general_replay and cfg.train.kd_kinds >= set(SELF_DISTILLED)


TRIAGE_KINDS = ("efficacy", "generalisation", "changed")
NOT_ASKED = ""  # the reference's answer to a phrasing not asked (it missed the fact's trained phrasing): wrong


def _trained_phrasing_first(model, tokenizer, probes, cfg: Config, log) -> dict[str, str]:
    """The reference is asked each pending fact's trained phrasing first; a fact it gets wrong there is unknown, and
    its other phrasings are not asked (recorded as wrong answers): on a night of new facts this skips ~3/4 of the
    reference's fact probes (120 facts: 340 of 457 probes). A fact it gets right is asked every phrasing (triage)."""
    from injector.evaluate import evaluate

    first = [p for p in probes if p.kind == "efficacy" and p.fact_id]
    if not first:
        return {}
    asked = evaluate(model, tokenizer, first, cfg.eval.max_new_tokens, cfg.eval.batch_size, latency_samples=0,
                     progress=False)
    missed = {r.probe.fact_id for r in asked.results if not r.correct}
    skip = {p.question: NOT_ASKED for p in probes
            if p.fact_id in missed and p.kind not in ("efficacy", "retention", "locality")}
    if skip:
        log(f"triage: {len(missed)} of {len(first)} facts missed in their trained phrasing; their other "
            f"{len(skip)} phrasings were not asked of the reference")
    return {**skip, **{r.probe.question: r.answer for r in asked.results}}


def known_facts(results) -> tuple[set[str], int]:
    """The facts answered right in every triage phrasing (at least two), and how many more are partly known."""
    by_fact: dict[str, list[bool]] = {}
    for r in results:
        if r.probe.fact_id and r.probe.kind in TRIAGE_KINDS:
            by_fact.setdefault(r.probe.fact_id, []).append(r.correct)
    known = {f for f, ok in by_fact.items() if len(ok) >= 2 and all(ok)}
    return known, sum(1 for f, ok in by_fact.items() if f not in known and any(ok))


def _triage(changes, pairs, before: EvalReport, home: Home, version: str | None, log):
    """Known-fact triage (SliCK-style): a pending fact the serving model already answers in every phrasing (at
    least two) is known: recorded as learned by that model and not trained; its probes stay, as retention, so the
    candidate must keep it. Partly known and unknown facts are trained. Returns the facts left to train, their
    pairs, the reference's report with the known facts' probes as retention, and the known facts."""
    known, partly = known_facts(before.results)
    log(f"triage: {len(known)} known (not trained), {partly} partly known, "
        f"{len(changes) - len(known) - partly} unknown")
    if not known:
        return changes, pairs, before, []
    ledger = Ledger(home.ledger)
    try:
        ledger.mark_known(sorted(known), version)
    finally:
        ledger.close()
    results = tuple(replace(r, probe=replace(r.probe, kind="retention")) if r.probe.fact_id in known
                    and r.probe.kind in TRIAGE_KINDS else r for r in before.results
                    if not (r.probe.fact_id in known and r.probe.kind not in TRIAGE_KINDS))
    return ([c for c in changes if c.triple.id not in known], [p for p in pairs if p.fact_id not in known],
            replace(before, results=results), [c.triple for c in changes if c.triple.id in known])


def start_run(plan: Plan, cfg: Config, home: Home | None = None) -> str:
    return registry.start_run({**_flat("", cfg.model_dump(mode="json")), "n_facts": len(plan.changes),
                               "triples": ",".join(plan.triples), "base_sha256": plan.base.sha256,
                               "init_adapter_version": plan.current if plan.init_adapter else "none"},
                              run_name=f"train-{plan.run_dir.name}", home=home)


def train_candidate(plan: Plan, cfg: Config, home: Home, run_id: str, resume: bool = False) -> TrainResult:
    """LoRA-train the plan's pairs from the champion's adapter (or a fresh one), per-step metrics to MLflow.

    Under torchrun/accelerate this runs on rank 0, which first hands the same work order to the other ranks."""
    from injector import distributed
    from injector.models import free_memory
    from injector.train import train_lora

    free_memory()  # the plan's reference model is gone: give its memory back before training loads its copy
    replay = [p for p in plan.pairs if p.origin == "replay"]
    key = model_key(plan.base.sha256, plan.current if plan.init_adapter else None)
    ewc_spec = EwcSpec(cfg.train.ewc_lambda, tuple(replay), home.cache / f"fisher-{key}-"
                       f"{fingerprint(replay, plan.base.sha256, cfg.train, None)['data']}.safetensors") \
        if cfg.train.ewc_lambda > 0 else None  # first run: anchored at the zero-init adapter (the base)
    order = {"pairs": list(plan.pairs), "base_path": plan.base.path, "out_dir": plan.run_dir, "cfg": cfg.train,
             "init_adapter": plan.init_adapter, "quantization": cfg.model.quantization, "ewc_spec": ewc_spec,
             "base_sha": plan.base.sha256, "resume": resume, "new_repeats": plan.new_repeats, "epochs": plan.passes,
             "step": plan.step, "start_prompts": plan.start_prompts}
    if distributed.from_env().multi:
        distributed.broadcast(order)
    return train_lora(**order, sink=lambda m, step: registry.log_metrics(run_id, m, step))


def follow_training(log=print) -> TrainResult | None:
    """A rank other than 0: wait for rank 0's work order, train on this rank's shard, and end (None: no work)."""
    from injector import distributed
    from injector.train import train_lora

    order = distributed.broadcast(None)
    if order is None:
        log(f"rank {distributed.from_env().rank}: nothing to train")
        return None
    return train_lora(**order)


def judge_candidate(plan: Plan, result: TrainResult, cfg: Config, home: Home) -> tuple[EvalReport, GateDecision]:
    """Answer the same probes with the candidate, measure PPL and KL drift, and run the gate.

    The reference (for the KL check's log-probs) stays loaded until both models have been timed, interleaved on the
    same probes (`evaluate.paired_latency`): the latency ratio compares like with like on one machine at one time."""
    from injector.evaluate import answer_logprobs, evaluate, kl_from, mean_answer_tokens, paired_latency
    from injector.models import free_memory, load_tokenizer, load_with_adapter

    free_memory()
    tokenizer = load_tokenizer(plan.base.path)
    ref_logp = None
    loc = [r for r in plan.before.results if r.probe.kind == "locality"]
    kl_args = ([r.probe.question for r in loc], [r.answer for r in loc])
    reference = load_with_adapter(plan.base, plan.init_adapter, cfg.model.quantization)
    if cfg.eval.kl:
        with timed("reference_kl"):
            ref_logp = answer_logprobs(reference, tokenizer, *kl_args, cfg.eval.batch_size)
    candidate = load_with_adapter(plan.base, result.adapter_dir, cfg.model.quantization)
    with timed("candidate_eval"):
        after = evaluate(candidate, tokenizer, list(plan.probes), cfg.eval.max_new_tokens, cfg.eval.batch_size,
                         latency_samples=0)
    with timed("latency"):  # both models in one process, interleaved on the same probes
        (r50, r95, r_tok, r_eq), (c50, c95, c_tok, c_eq) = paired_latency(
            [reference, candidate], tokenizer, list(plan.probes), cfg.eval.max_new_tokens, cfg.eval.latency_samples)
    del reference
    free_memory()
    with timed("candidate_ppl"):
        extra = _measure(candidate, tokenizer, cfg, home, list(plan.statements))
    if ref_logp is not None:
        with timed("candidate_kl"):
            extra["kl_drift"] = kl_from(ref_logp, answer_logprobs(candidate, tokenizer, *kl_args,
                                                                  cfg.eval.batch_size))
    del candidate
    free_memory()
    # answer length over every general-knowledge probe both models answered (the same probes, the same budget), not
    # the timed dozen: on the demo the first 12 probes read 1.49x where all 57 read 0.95x (docs/BENCHMARKS.md)
    (r_all, n_all), (c_all, _) = (mean_answer_tokens(tokenizer, rep.results) for rep in (plan.before, after))
    if n_all and math.isfinite(r_all) and math.isfinite(c_all):
        r_tok, c_tok = r_all, c_all
    extra.update(answer_tokens=c_tok, latency_ms_p95_equal_length=c_eq, reference_latency_ms_p50=r50,
                 reference_latency_ms_p95=r95, reference_answer_tokens=r_tok,
                 reference_latency_ms_p95_equal_length=r_eq)
    after = replace(after, latency_ms_p50=c50, latency_ms_p95=c95, extra=extra)
    thresholds = load_thresholds(cfg.content_path(cfg.eval.dir) / "gate.yaml")
    ref_metrics = {**metrics_of(plan.before), "latency_ms_p50": r50, "latency_ms_p95": r95, "answer_tokens": r_tok,
                   "latency_ms_p95_equal_length": r_eq}
    decision = decide(metrics_of(after), thresholds, reference=ref_metrics,
                      compared_with=f"v{plan.current}" if plan.current else "base")
    return after, decision


def record_candidate(plan: Plan, result: TrainResult, after: EvalReport, decision: GateDecision, home: Home,
                     run_id: str, log=print, cfg: Config | None = None) -> tuple[str, bool]:
    """Register the candidate (always), move `champion` if the gate passed, write the ledger. -> (version, promoted)"""
    from injector.report import write_run_report

    metrics = metrics_of(after)
    registry.log_metrics(run_id, {**{f"eval_{k}": v for k, v in metrics.items()},
                                  "train_tokens_per_s": result.tokens_per_s, "train_wall_s": result.wall_s,
                                  "train_skipped_share": result.skipped_share})
    registry.log_artifacts(run_id, write_run_report(plan.run_dir / "report", plan.before, after, result, decision),
                           "report")
    tags = {"base_sha256": plan.base.sha256, "gate": "pass" if decision.passed else "fail",
            "compared_with": decision.compared_with, "n_facts": str(len(plan.changes)),
            "triples": ",".join(plan.triples), "run_id": run_id,
            **{f"gate.{c.name}": f"{c.value:.4f} {c.op} {c.bound:g}: {_verdict(c)}" for c in decision.checks}}
    with timed("registration"):
        version = registry.log_adapter(run_id, result.adapter_dir, plan.base.path, tags, plan.base.sha256,
                                       plan.base.hub_id)
        promoted = decision.passed and registry.move_champion(version, plan.current, "gate passed")
    if promoted:  # tomorrow's reference is this candidate: its general-knowledge answers and PPL are known now
        key = model_key(plan.base.sha256, version)
        _save_answers(home, key, cfg, after)
        _save_ppl(home, key, cfg, after.extra.get("general_ppl"))
    if decision.passed and not promoted:
        log("the champion changed while this run was gated; not promoted (run `injector promote` to re-gate)")
    ledger = Ledger(home.ledger)
    try:
        ledger.record_accuracy(per_fact_accuracy(after), version)
        # what this version knows: the adapter it started from, plus this batch (promote/rollback read it)
        ledger.record_knowledge(version, plan.current if plan.init_adapter else None,
                                [c.triple.id for c in plan.changes])
        if promoted:
            ledger.mark_learned([c.triple.id for c in plan.changes], version)
            ledger.follow_champion(version)
    finally:
        ledger.close()
    return version, promoted


def _direct(name: str, fn, *args, **kwargs):
    return fn(*args, **kwargs)


def run_train(triples: list[Path] | None, cfg: Config, home: Home, log=print, resume: bool = False,
              runner=_direct) -> TrainOutcome:
    """Ingest `triples` (if given), then inject every pending fact into the champion (or the base) and gate it.

    The one sequence of stages, for `injector train` and the nightly flow alike: `runner(name, fn, *args)` runs
    each stage (the flow passes one that makes it a Prefect task). Every stage's wall time is logged, recorded as
    an MLflow metric `stage_<name>_s` and returned in `TrainOutcome.stage_s`.

    Under torchrun / accelerate launch, rank 0 runs all of this and the other ranks only train (distributed.py).
    """
    from injector import distributed

    t0 = time.perf_counter()
    dist = distributed.from_env()
    if not dist.multi:
        return _run_train(triples, cfg, home, log, resume, runner, t0)
    distributed.init()
    try:
        if not dist.main:
            return TrainOutcome(ingest=None, train=follow_training(log), wall_s=time.perf_counter() - t0)
        sent = []  # rank 0 tells the other ranks "nothing to train" when it stops before training
        try:
            return _run_train(triples, cfg, home, log, resume, runner, t0, on_train=lambda: sent.append(True))
        finally:
            if not sent:
                distributed.broadcast(None)
    finally:
        distributed.shutdown()


def _run_train(triples, cfg: Config, home: Home, log, resume: bool, runner, t0: float, on_train=None) -> TrainOutcome:
    with collecting() as parts:
        out = _run_stages(triples, cfg, home, log, resume, runner, t0, on_train, parts)
    if parts:
        log("time by part: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))
    return replace(out, part_s=dict(parts))


def _run_stages(triples, cfg: Config, home: Home, log, resume: bool, runner, t0: float, on_train,
                parts: dict) -> TrainOutcome:
    times: dict[str, float] = {}

    def stage(name: str, fn, *args, **kwargs):
        t = time.perf_counter()
        try:
            return runner(name, fn, *args, **kwargs)
        finally:
            times[name] = time.perf_counter() - t
            log(f"stage {name}: {times[name]:.1f} s")

    home.ensure()
    with single_flight(home.root, "injector train"):
        from injector.models import peak_memory_mib
        from injector.preflight import run_preflight
        from injector.readers import expand

        peak_memory_mib(reset=True)
        if triples:
            expand(triples)  # a missing input is named before the (slower) model and store checks
        base = stage("preflight", run_preflight, cfg, home, log)  # before the ingest commits anything
        ingest = stage("ingest", run_ingest, triples, cfg, home, log, True) if triples else None
        plan = stage("plan", plan_candidate, cfg, home, log, triples, resume, base)
        if plan is None:  # an empty diff is a no-op only when nothing is pending
            return TrainOutcome(ingest=ingest, wall_s=time.perf_counter() - t0, stage_s=dict(times))
        run_id = stage("start_run", start_run, plan, cfg, home)
        try:
            registry.log_metrics(run_id, {f"stage_{k}_s": v for k, v in times.items()})
            if on_train is not None:
                on_train()
            result = stage("train", train_candidate, plan, cfg, home, run_id, resume)
            after, decision = stage("judge", judge_candidate, plan, result, cfg, home)
            version, promoted = stage("record", record_candidate, plan, result, after, decision, home, run_id, log,
                                      cfg)
            times["total"] = time.perf_counter() - t0
            peak = peak_memory_mib()
            registry.log_metrics(run_id, {**{f"stage_{k}_s": v for k, v in times.items()},
                                          **{f"part_{k}_s": v for k, v in parts.items()},
                                          **({"peak_gpu_mib": peak} if peak is not None else {})})
            registry.end_run(run_id, "FINISHED")
        except BaseException:
            registry.end_run(run_id, "FAILED")
            raise
    return TrainOutcome(ingest=ingest, before=plan.before, after=after, train=result, decision=decision,
                        version=version, promoted=promoted, previous_champion=plan.current, run_id=run_id,
                        wall_s=time.perf_counter() - t0, stage_s=dict(times), peak_gpu_mib=peak)


def _answers_file(home: Home, key: str, cfg: Config) -> Path:
    return home.cache / f"answers-{key}-{cfg.eval.max_new_tokens}.json"


def _load_answers(home: Home, key: str, cfg: Config) -> dict[str, str]:
    """A model's cached answers to the general-knowledge (locality) probes: they depend only on the model and the
    probe, so a champion judged last night need not answer them again tonight."""
    import json

    f = _answers_file(home, key, cfg)
    try:
        return json.loads(f.read_text())["answers"] if f.exists() else {}
    except (ValueError, KeyError):
        return {}


def _save_answers(home: Home, key: str, cfg: Config | None, report: EvalReport) -> None:
    import json

    if cfg is None:
        return
    answers = {r.probe.question: r.answer for r in report.results
               if r.probe.kind == "locality" and not r.probe.messages}
    if answers:
        f = _answers_file(home, key, cfg)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps({"answers": {**_load_answers(home, key, cfg), **answers}}))
        tmp.replace(f)


def _ppl_file(home: Home, key: str, cfg: Config) -> Path:
    return home.cache / f"ppl-{key}-{cfg.eval.ppl_max_tokens}.json"


def _save_ppl(home: Home, key: str, cfg: Config | None, ppl) -> None:
    import json

    if cfg is not None and ppl is not None and cfg.eval.ppl_max_tokens:
        _ppl_file(home, key, cfg).write_text(json.dumps({"general_ppl": ppl}))


def _measure(model, tokenizer, cfg: Config, home: Home, statements: list[str], key: str | None = None) -> dict:
    """Perplexity on the general corpus (cached per reference model) and on the facts' statements."""
    from injector.evaluate import perplexity

    out = {"fact_ppl": perplexity(model, tokenizer, statements, batch_size=cfg.eval.batch_size)}
    if cfg.eval.ppl_max_tokens:
        out["general_ppl"] = _general_ppl(model, tokenizer, cfg, home, key)
    return out


def _general_ppl(model, tokenizer, cfg: Config, home: Home, key: str | None) -> float:
    """Perplexity on the general corpus, cached per model key (`model` may be None where it is cached)."""
    import json

    from injector.evaluate import perplexity

    cache = _ppl_file(home, key, cfg) if key else None
    if cache is not None and cache.exists():
        return json.loads(cache.read_text())["general_ppl"]
    corpus = cfg.content_path(cfg.eval.dir) / f"general_corpus.{cfg.recipes.language}.txt"
    if not corpus.exists():
        raise InjectorError(f"general-text corpus not found: {corpus} (or set eval.ppl_max_tokens=0)")
    paras = [p for p in corpus.read_text(encoding="utf-8").split("\n\n") if not p.startswith("#")]
    ppl = perplexity(model, tokenizer, paras, max_tokens=cfg.eval.ppl_max_tokens)
    if cache is not None:
        cache.write_text(json.dumps({"general_ppl": ppl}))
    return ppl


def _base_reference(home: Home, base, tokenizer, cfg: Config, probes, log=print) -> dict[str, float]:
    """The base model's accuracy on tonight's general-knowledge (locality) probes and its general PPL, where the
    reference is a champion: the gate bounds the candidate against the base too (`min_locality_vs_base`), because
    each night's ratio compares with the champion it replaces, and losses every night allows would add up over
    nights (0.9 a night is 0.59 after five). Read from the base's answers and PPL cached on the home's first night;
    what is not cached (a home from before, another probe set or decode budget) the base computes once."""
    from injector.evaluate import evaluate
    from injector.models import load_with_adapter

    key = model_key(base.sha256, None)
    loc = [p for p in probes if p.kind == "locality"]
    answers = _load_answers(home, key, cfg)
    missing = sum(p.messages != () or p.question not in answers for p in loc)
    model = None
    if missing or (cfg.eval.ppl_max_tokens and not _ppl_file(home, key, cfg).exists()):
        log(f"base model: answering {missing} general-knowledge probes (and its general PPL) once, cached for the "
            "nights after")
        model = load_with_adapter(base, None, cfg.model.quantization)
    report = evaluate(model, tokenizer, loc, cfg.eval.max_new_tokens, cfg.eval.batch_size, latency_samples=0,
                      progress=False, known=answers)
    _save_answers(home, key, cfg, report)
    out = {"base_locality": report.by_kind()["locality"]["accuracy"]}
    if cfg.eval.ppl_max_tokens:
        out["base_general_ppl"] = _general_ppl(model, tokenizer, cfg, home, key)
    return out


def _run_dir(home: Home, resume: bool) -> Path:
    """A new run dir, or with `resume` the newest one that holds checkpoints."""
    if resume:
        runs = sorted(p for p in home.runs.iterdir() if (p / "checkpoints").is_dir()) if home.runs.exists() else []
        if not runs:
            raise InjectorError(f"nothing to resume: no run with checkpoints under {home.runs}")
        return runs[-1]
    return home.runs / time.strftime("%Y%m%d-%H%M%S")


def old_fact_quota(budget: int, r, neighbours: int) -> int:
    """Earlier facts replayed: their share of the replay budget (all of it without general replay); with
    `recipes.replay_neighbours` at least every earlier fact of the batch's subjects and relations, up to one more
    budget on top of the anchors' and general instructions' part (which this never takes from)."""
    n_old = round(budget * r.old_fact_share) if r.general_replay else budget
    return max(n_old, min(neighbours, budget)) if r.replay_neighbours else n_old


def _model_paraphrases(changes, recipes, model, tokenizer, cfg: Config, log) -> list:
    """The reference rephrases each fact's trained question (greedy); the usable rephrasings become training pairs
    (`recipes.paraphrase_pairs`)."""
    from injector.evaluate import generate
    from injector.recipes import PARAPHRASE_PROMPT, _fill, paraphrase_pairs

    asked = [(c.triple.id, c.triple.question or _fill(recipes.relation(c.triple.predicate).questions[0], c.triple))
             for c in changes]
    texts = generate(model, tokenizer, [[{"role": "user", "content": PARAPHRASE_PROMPT.format(question=q)}]
                                        for _, q in asked], 40, cfg.eval.batch_size)
    pairs = paraphrase_pairs(changes, recipes, {i: x for (i, _), x in zip(asked, texts)})
    log(f"model paraphrases: {len(pairs)} of {len(asked)} facts rephrased usably by the model itself")
    return pairs


def _model_sentences(changes, pairs, recipes, model, tokenizer, cfg: Config, log) -> list:
    """The reference rewords each question-form fact's question and answer as one sentence (greedy); the usable
    ones (`recipes.model_sentence`) become the answers of that fact's pairs (`recipes.sentence_answers`)."""
    from injector.evaluate import generate
    from injector.recipes import SENTENCE_PROMPT, model_sentence, sentence_answers

    asked = [c.triple for c in changes if c.triple.question]
    texts = generate(model, tokenizer, [[{"role": "user", "content": SENTENCE_PROMPT.format(
        question=t.question, answer=t.object)}] for t in asked], 40, cfg.eval.batch_size)
    sentences = {t.id: s for t, x in zip(asked, texts) if (s := model_sentence(x, t))}
    log(f"model sentences: {len(sentences)} of {len(asked)} question-form facts answered in the model's own "
        f"sentence; the others as data_recipes/mix.yaml's question_answer")
    return sentence_answers(pairs, changes, sentences, recipes)


def _subject_neighbourhood(changes, earlier, recipes, cfg: Config) -> tuple[dict, dict]:
    """The batch's subjects' other relations (`replay.subject_neighbourhood`) and the one per subject held out for
    the `neighbourhood` probes; the split does not depend on `recipes.subject_share`, so rows with and without
    subject replay are judged on the same probes."""
    from injector.replay import held_out_relations, load_anchors, sibling_relations, subject_neighbourhood

    batch = [c.triple for c in changes]
    known = load_anchors(cfg.content_path(cfg.recipes.dir) / f"anchors.{cfg.recipes.language}.yaml")
    near = subject_neighbourhood(batch, sibling_relations(known, [*earlier, *batch], recipes), recipes,
                                 [*earlier, *batch])
    return near, held_out_relations(near, cfg.train.seed)


def _replay(pairs, changes, earlier, recipes, cfg: Config, model, tokenizer, home: Home, base_sha: str,
            adapter_version: str | None, subjects: tuple[dict, dict] = ({}, {}), rotations: int = 1,
            exclude: tuple[str, ...] = (), kd_pool: int = 0, old_rotations: int = 1,
            known: set[str] = frozenset()) -> list:
    """Replay for a new:replay mix: earlier facts (up to their share), anchors in the batch's relations (every
    relation for question-answer facts; up to their share), self-distilled general prompts for the rest; and on
    top, each subject of the batch asked one of its other relations, each question-answer fact's question asked about
    a real subject, each real object of the batch asked its own relations (`exclude`: questions they must not
    ask). Prompts are answered by the current model. The budget is the mix's times `rotations`; the anchors and
    general instructions together at least `kd_pool` (`_kd_pool`); the earlier facts from `old_rotations` budgets
    where that is more (`_rotations`' old_k); the facts triaged as known tonight (`known`) in more of their trained
    wordings where the earlier facts' quota has room (`replay.old_fact_pairs`)."""
    import random

    from injector.replay import (
        anchor_prompts,
        anchor_relations,
        distilled_pairs,
        load_anchors,
        model_key,
        neighbourhood,
        object_prompts,
        old_fact_pairs,
        question_swap_prompts,
        self_distill,
        subject_prompts,
    )

    r = cfg.recipes
    once = _replay_budget(pairs, cfg)
    budget = once * rotations
    if budget == 0:
        return []
    rng = random.Random(cfg.train.seed)
    batch = [c.triple for c in changes]
    n_old = old_fact_quota(once * max(rotations, old_rotations), r,
                           neighbourhood(earlier, batch, recipes) if r.replay_neighbours else 0)
    old = old_fact_pairs(earlier, recipes, n_old, rng, batch, known)
    rest = budget - min(len(old), round(budget * r.old_fact_share))  # neighbours beyond the share take no part
    rest = max(rest, kd_pool)
    if rest <= 0 or not r.general_replay:
        return old
    known = load_anchors(cfg.content_path(r.dir) / f"anchors.{r.language}.yaml")
    anchors = anchor_prompts(anchor_relations(changes, recipes, known), known, recipes,
                             round(rest * r.anchor_share), rng, r.anchor_other_share)
    prompts = _general_prompts(cfg)
    general = rng.sample(prompts, min(rest - len(anchors), len(prompts)))
    # the batch's own neighbourhood, on top of the mix (anchors and general instructions keep their measured
    # shares), at most `subject_share` of the replay budget: one question per subject about one of its other
    # relations, and each question-answer fact's question asked about a real subject instead
    cap = round(budget * r.subject_share)
    subject = subject_prompts(*subjects, recipes, min(len(subjects[0]), cap), rng)
    subject += question_swap_prompts(batch, known, recipes, cap - len(subject), rng)
    # and the batch's real objects asked their own relations (a new citizenship's country: its capital, language),
    # at most `object_share` of the budget, the locality probes' (relation, object) left out
    subject += object_prompts(batch, recipes, [*earlier, *batch], exclude, round(budget * r.object_share), rng)
    cache = home.cache / f"distill-{model_key(base_sha, adapter_version)}.jsonl"
    answers = self_distill(model, tokenizer, subject + anchors + general, cache, r.distill_max_new_tokens,
                           cfg.eval.batch_size)
    ask = dict(subject + anchors + general)
    return (old + distilled_pairs({i: answers[i] for i, _ in subject}, ask, "subject")
            + distilled_pairs({i: answers[i] for i, _ in anchors}, ask, "anchor")
            + distilled_pairs({i: answers[i] for i, _ in general}, ask, "general"))


def _verdict(c) -> str:
    return "info" if not c.gated else "pass" if c.passed else "FAIL"


def per_fact_accuracy(report: EvalReport) -> dict[str, float]:
    acc: dict[str, list[bool]] = {}
    for r in report.results:
        if r.probe.fact_id:
            acc.setdefault(r.probe.fact_id, []).append(r.correct)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def outcome_summary(o: TrainOutcome) -> dict:
    out: dict = {"noop": o.noop, "exit_code": o.exit_code, "ingest": o.ingest.summary() if o.ingest else None,
                 "wall_s": o.wall_s, "stage_s": o.stage_s, "part_s": o.part_s, "peak_gpu_mib": o.peak_gpu_mib}
    if o.noop:
        return out
    return {**out, "version": o.version, "promoted": o.promoted, "previous_champion": o.previous_champion,
            "run_id": o.run_id, "gate": o.decision.table(),
            "train": {k: v for k, v in asdict(o.train).items() if "history" not in k},
            "by_kind_before": o.before.by_kind(), "by_kind_after": o.after.by_kind()}
