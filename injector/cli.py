"""The `injector` command line. Heavy libraries are imported inside commands: `injector --help` stays fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from injector.errors import EXIT_INFRA, InjectorError

app = typer.Typer(
    help="Keep an open-weight LLM in step with a knowledge graph: ingest triples, inject them with LoRA, "
         "gate the result and promote it in the MLflow registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

CONFIG = typer.Option(None, "--config", "-c", help="YAML config file (see examples/demo.yaml).")
MASS_RETRACT = typer.Option(False, "--allow-mass-retraction", help="Snapshot mode: accept a drop that retracts more "
                                                                    "than ingest.max_retract_fraction of the facts.")
JSON = typer.Option(False, "--json", help="Print one JSON object on stdout (logs go to stderr); see README.")
OVERRIDES = typer.Argument(None, help="Dotted config overrides, e.g. train.epochs=3 train.lora.r=8.",
                           show_default=False)


def _config(config: Path | None, overrides: list[str] | None, base_model: str | None = None):
    from injector.config import load_config

    extra = list(overrides or [])
    if base_model:
        extra.append(f"model.base={base_model}")
    return load_config(config, extra)


def _home():
    from injector.home import Home

    return Home.from_env()


@app.command()
def train(
    triples: list[Path] | None = typer.Option(None, "--triples", "-t", help="Triples to ingest first (JSONL, CSV, "
                                              ".nt, .ttl, or a dir of drop files). Without it: train pending facts."),
    config: Path | None = CONFIG,
    base_model: str | None = typer.Option(None, "--base-model", help="HF model id or local dir (default: embedded "
                                                                        "SmolLM2-135M-Instruct)."),
    mode: str | None = typer.Option(None, "--mode", help="snapshot or delta (default: ingest.mode)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary instead of tables."),
    resume: bool = typer.Option(False, "--resume", help="Continue the last interrupted run from its last complete "
                                                          "checkpoint (refused if data, base or config changed)."),
    allow_mass_retraction: bool = MASS_RETRACT,
    overrides: list[str] | None = OVERRIDES,
) -> None:
    """Ingest TRIPLES, inject every pending fact with LoRA, check by generation, gate, register in MLflow.

    Exit codes: 0 promoted (or nothing to do), 5 trained but refused by the gate, 2 bad input, 3 already running,
    4 infrastructure fault."""
    from injector.pipeline import outcome_summary, run_train
    from injector.report import print_before_after, print_gate

    cfg = _config(config, [*(overrides or []), *([f"ingest.mode={mode}"] if mode else []),
                           *(["ingest.max_retract_fraction=1"] if allow_mass_retraction else [])], base_model)
    home = _home()
    outcome = run_train(triples, cfg, home, log=(lambda *a: print(*a, file=sys.stderr)) if json_out else print,
                        resume=resume)
    from injector.distributed import from_env

    if not from_env().main:  # torchrun/accelerate: the other ranks only trained; rank 0 reports
        return
    if json_out:
        print(json.dumps(outcome_summary(outcome), indent=2, default=str))
        raise typer.Exit(outcome.exit_code)
    if outcome.noop:
        print("nothing to train: no pending facts, no new model version (exit 0)")
        return
    print_before_after(outcome.before, outcome.after)
    print_gate(outcome.decision)
    b, a = outcome.before.extra, outcome.after.extra
    if "general_ppl" in a and b.get("general_ppl"):
        print(f"general-text perplexity {b['general_ppl']:.2f} -> {a['general_ppl']:.2f} "
              f"({a['general_ppl'] / b['general_ppl'] - 1:+.1%}); fact-statement perplexity {b['fact_ppl']:.1f} -> "
              f"{a['fact_ppl']:.1f}; KL drift {a.get('kl_drift', float('nan')):.4f} nats/token")
    t = outcome.train
    print(f"trained {t.n_examples} examples, {t.steps} steps, {t.epochs:.1f} epochs in {t.wall_s:.0f} s: "
          f"{t.tokens_per_s:.0f} train tokens/s"
          + (f"; {t.skipped_share:.0%} of the pair passes skipped, their fact learned" if t.skipped_share else ""))
    verdict = "promoted to champion" if outcome.promoted else "not promoted (champion unchanged)"
    print(f"registered model version {outcome.version}: {verdict}; MLflow store: {home.tracking_uri}")
    print("time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in outcome.stage_s.items()))
    print(f"total wall time {outcome.wall_s:.0f} s")
    raise typer.Exit(outcome.exit_code)


@app.command()
def ingest(
    inputs: list[str] = typer.Argument(..., help="Files (JSONL, CSV, .nt, .ttl) or dirs of drop files, and dotted "
                                                 "config overrides (key=value)."),
    mode: str | None = typer.Option(None, "--mode", help="snapshot (absent facts are retracted) or delta."),
    config: Path | None = CONFIG,
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    allow_mass_retraction: bool = MASS_RETRACT,
) -> None:
    """Validate KG triples, quarantine bad records, diff against the last snapshot, record it in the ledger."""
    from injector.pipeline import run_ingest

    overrides = [i for i in inputs if "=" in i and not Path(i).exists()]
    paths = [Path(i) for i in inputs if i not in overrides]
    if not paths:
        raise InjectorError("ingest: no input files given")
    cfg = _config(config, [*overrides, *([f"ingest.mode={mode}"] if mode else []),
                           *(["ingest.max_retract_fraction=1"] if allow_mass_retraction else [])])
    out = run_ingest(paths, cfg, _home(), log=(lambda *a: print(*a, file=sys.stderr)) if json_out else print)
    if json_out:
        print(json.dumps(out.summary()))
        return
    for k, v in out.summary().items():
        print(f"  {k:<20} {v}")


@app.command()
def init(
    directory: Path = typer.Argument(..., help="Where to write an editable copy of the content."),
    force: bool = typer.Option(False, "--force", help="Overwrite files that exist."),
    json_out: bool = JSON,
) -> None:
    """Write the default data_recipes/ and eval/ (templates, mix, anchors, probes, gate) and a config that uses them.

    Edit the copy; run injector from DIRECTORY (content resolves against the working directory first) or pass
    `--config DIRECTORY/injector.yaml`. Without a copy, the defaults installed with the package are used."""
    import shutil

    from injector.config import packaged

    written = []
    for name in ("data_recipes", "eval"):
        src, dst = packaged(name), directory / name
        for f in sorted(src.iterdir()):
            if not f.is_file() or f.suffix not in (".yaml", ".jsonl", ".txt", ".md"):
                continue
            target = dst / f.name
            if target.exists() and not force:
                raise InjectorError(f"{target} exists (use --force to overwrite)")
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            written.append(str(target))
    cfg = directory / "injector.yaml"
    if not cfg.exists() or force:
        cfg.write_text(f"# injector config: the content copied by `injector init`; every other key keeps its default\n"
                       f"recipes:\n  dir: {(directory / 'data_recipes').resolve()}\n"
                       f"eval:\n  dir: {(directory / 'eval').resolve()}\n")
        written.append(str(cfg))
    if json_out:
        print(json.dumps({"directory": str(directory), "written": written}))
        return
    print(f"wrote {len(written)} files under {directory}; use them with --config {cfg}")


@app.command()
def facts(
    subject: str | None = typer.Option(None, "--subject", "-s", help="Only facts about this subject."),
    status: str | None = typer.Option(None, "--status", help="active, changed or retracted."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON rows."),
) -> None:
    """What the knowledge ledger holds, and which model version learned each fact."""
    from injector.ledger import Ledger

    if status not in (None, "active", "changed", "retracted"):
        raise InjectorError(f"--status {status!r}: expected active, changed or retracted")
    ledger = Ledger(_home().ensure().ledger)
    rows = ledger.facts(subject, status)
    ledger.close()
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no facts")
    for r in rows:
        acc = "" if r["last_accuracy"] is None else f" acc={r['last_accuracy']:.2f}@v{r['last_eval_version']}"
        learned = f"learned by v{r['learned_version']}" if r["learned_version"] else "pending"
        prov = "".join(f" {k}={r[k]}" for k in ("source", "valid_from", "valid_to") if r.get(k))
        print(f"{r['status']:<9} {r['subject']} | {r['predicate']} | {r['object']}  ({learned}{acc}{prov})")


@app.command()
def diff(
    version_a: str = typer.Argument(..., help="A model version (or champion / challenger)."),
    version_b: str = typer.Argument(..., help="Another model version."),
    json_out: bool = JSON,
) -> None:
    """Which facts model VERSION_B knows that VERSION_A does not, and the reverse (from the ledger)."""
    from injector import registry
    from injector.ledger import Ledger

    home = _home().ensure()
    registry.connect(home)
    a, b = registry.resolve_version(version_a), registry.resolve_version(version_b)
    ledger = Ledger(home.ledger)
    try:
        for v in (a, b):
            if not ledger.knows(v):
                raise InjectorError(f"the ledger has no record of what v{v} learned (registered before this was "
                                    "tracked)")
        out = ledger.version_diff(a, b)
    finally:
        ledger.close()
    if json_out:
        print(json.dumps({"a": a, "b": b, **out}, indent=2))
        return
    for kind, sign in (("gained", "+"), ("lost", "-")):
        for r in out[kind]:
            src = f" (source {r['source']})" if r["source"] else ""
            print(f"{sign} {r['subject']} | {r['predicate']} | {r['object']}  learned by v{r['learned_in']}{src}")
    print(f"v{a} -> v{b}: {len(out['gained'])} facts gained, {len(out['lost'])} lost")


recipes_app = typer.Typer(help="Data recipes: preview the instruction pairs built from triples.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")


@recipes_app.command("preview")
def recipes_preview(
    file: Path = typer.Argument(..., help="Triples (JSONL, CSV, .nt, .ttl)."),
    n: int = typer.Option(5, "--n", help="How many facts to show."),
    config: Path | None = CONFIG,
    json_out: bool = typer.Option(False, "--json", help="JSON list of {fact, kind, messages}."),
    overrides: list[str] | None = OVERRIDES,
) -> None:
    """Show the instruction pairs the recipes build for the first N facts of FILE (nothing is trained)."""
    from injector.ingest import read_batch
    from injector.recipes import build_pairs, load_recipes
    from injector.records import FactChange

    cfg = _config(config, overrides)
    recipes = load_recipes(cfg.content_path(cfg.recipes.dir), cfg.recipes.language)
    batch = read_batch([file], recipes.single_valued, "delta", cfg.ingest.language, cfg.ingest.max_field_length)
    triples = batch.triples[:n]
    pairs = build_pairs([FactChange(t) for t in triples], recipes, seed=cfg.train.seed)
    by_id = {t.id: t for t in triples}
    rows = [{"fact": {"subject": by_id[p.fact_id].subject, "predicate": by_id[p.fact_id].predicate,
                      "object": by_id[p.fact_id].object}, "kind": p.kind, "template": p.template_id,
             "messages": list(p.messages)} for p in pairs]
    if json_out:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(pairs)} pairs for {len(triples)} facts (dev = early-stopping split, not trained)")
    for col in ("fact", "kind", "prompt", "answer"):
        table.add_column(col, overflow="fold")
    for r in rows:
        f = r["fact"]
        prompt = " / ".join(m["content"] for m in r["messages"][:-1])
        table.add_row(f"{f['subject']} | {f['predicate']} | {f['object']}", r["kind"], prompt,
                      r["messages"][-1]["content"])
    Console().print(table)


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question to ask."),
    model: str = typer.Option("champion", "--model", "-m", help="champion, challenger, base, or a version number."),
    config: Path | None = CONFIG,
    max_new_tokens: int = typer.Option(64, help="Longest answer, in tokens."),
    json_out: bool = JSON,
    overrides: list[str] | None = OVERRIDES,
) -> None:
    """Print the model's answer (chat template applied, greedy decoding)."""
    from injector.evaluate import generate

    if not question.strip():
        raise InjectorError("ask: the question is empty")
    cfg = _config(config, overrides)
    mdl, tok = _load_model(model, cfg)
    text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                   tokenize=False)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    limit = getattr(mdl.config, "max_position_embeddings", None)
    if limit and n + max_new_tokens > limit:
        raise InjectorError(f"ask: the question is {n} tokens; with {max_new_tokens} answer tokens it exceeds the "
                            f"model's context of {limit}")
    answer = generate(mdl, tok, [[{"role": "user", "content": question}]], max_new_tokens, 1)[0]
    if json_out:
        print(json.dumps({"model": model, "question": question, "answer": answer}))
        return
    print(answer)


def _load_model(ref: str, cfg):
    """Base or a registered version (adapter fetched from the registry) with its tokenizer."""
    from injector import registry
    from injector.models import load_tokenizer, load_with_adapter, resolve_base

    home = _home().ensure()
    if ref == "base":
        base = resolve_base(cfg.model.base, home.models)
        return load_with_adapter(base, None, cfg.model.quantization), load_tokenizer(base.path)
    registry.connect(home)
    version = registry.resolve_version(ref)
    adapter, base_path = registry.fetch_adapter(version, home.adapters)
    base = resolve_base(base_path or cfg.model.base, home.models)
    return load_with_adapter(base, adapter, cfg.model.quantization), load_tokenizer(base.path)


@app.command("eval")
def eval_cmd(
    questions: Path = typer.Option(..., "--questions", "-q", help="JSONL rows: question, answers, kind, "
                                                                     "forbidden (optional)."),
    model: str = typer.Option("champion", "--model", "-m", help="champion, challenger, base, or a version number."),
    config: Path | None = CONFIG,
    json_out: bool = typer.Option(False, "--json", help="Print JSON: {by_kind: {kind: {n, accuracy}}, overall}."),
    context: Path | None = typer.Option(None, "--context", help="In-context baseline: state the facts of this "
                                                                   "triples file in the prompt (no training)."),
    overrides: list[str] | None = OVERRIDES,
) -> None:
    """Answer each question by generation and report accuracy per kind and overall."""
    from injector.evaluate import evaluate, in_context
    from injector.probes import read_questions

    cfg = _config(config, overrides)
    probes = read_questions(questions)
    if context is not None:
        from injector.ingest import read_batch
        from injector.recipes import load_recipes, statement_of

        recipes = load_recipes(cfg.content_path(cfg.recipes.dir), cfg.recipes.language)
        facts = [statement_of(t, recipes) for t in read_batch([context], mode="delta").triples]
        probes = in_context(probes, facts)
    mdl, tok = _load_model(model, cfg)
    report = evaluate(mdl, tok, probes, cfg.eval.max_new_tokens, cfg.eval.batch_size, cfg.eval.latency_samples,
                      progress=not json_out)
    if json_out:
        print(json.dumps({"by_kind": report.by_kind(), "overall": report.accuracy(),
                          "latency_ms_p50": report.latency_ms_p50, "latency_ms_p95": report.latency_ms_p95}))
        return
    for kind, row in report.by_kind().items():
        print(f"{kind:<16} n={row['n']:<5} accuracy={row['accuracy']:.3f}")
    print(f"{'overall':<16} n={len(probes):<5} accuracy={report.accuracy():.3f}")
    print(f"latency p50/p95: {report.latency_ms_p50:.0f}/{report.latency_ms_p95:.0f} ms on {report.hardware}")


@app.command()
def status(json_out: bool = JSON) -> None:
    """The champion, its gate table, and the latest versions."""
    from injector import registry

    registry.connect(_home().ensure())
    champ = registry.champion()
    tags = registry.version_tags(champ) if champ else {}
    versions = registry.versions()[:5]
    if json_out:
        print(json.dumps({"champion": champ, "gate": tags.get("gate"), "compared_with": tags.get("compared_with"),
                          "checks": {k[5:]: v for k, v in tags.items() if k.startswith("gate.")},
                          "versions": _version_rows(versions)}, indent=2))
        return
    if champ is None:
        print("no champion yet: run `injector train --triples FILE`")
    else:
        print(f"champion: version {champ} (gate {tags.get('gate', '?')}, compared with "
              f"{tags.get('compared_with', '?')}, base {tags.get('base_sha256', '?')[:12]})")
        for k, v in sorted(tags.items()):
            if k.startswith("gate."):
                print(f"  {k[5:]:<22} {v}")
    _print_versions(versions)


def _version_rows(rows: list[dict]) -> list[dict]:
    return [{"version": r["version"], "aliases": r["aliases"], "gate": r["tags"].get("gate"),
             "n_facts": r["tags"].get("n_facts"), "triples": r["tags"].get("triples"), "run_id": r["run_id"],
             "created": r["created"]} for r in rows]


def _print_versions(rows: list[dict]) -> None:
    for r in rows:
        aliases = f" [{', '.join(r['aliases'])}]" if r["aliases"] else ""
        print(f"  v{r['version']:<4} gate={r['tags'].get('gate', '?'):<5} {r['tags'].get('triples', '')}{aliases}")


@app.command()
def history(json_out: bool = JSON) -> None:
    """Every registered version with its gate verdict and aliases, newest first."""
    from injector import registry

    registry.connect(_home().ensure())
    rows = registry.versions()
    if json_out:
        print(json.dumps({"versions": _version_rows(rows)}, indent=2))
        return
    if not rows:
        print("no model versions yet")
    _print_versions(rows)


@app.command()
def promote(
    version: str = typer.Argument(..., help="Version number to make champion."),
    force: bool = typer.Option(False, "--force", help="Promote even when the gate did not pass."),
    json_out: bool = JSON,
) -> None:
    """Make VERSION the champion if its gate passed against the current champion (or with --force)."""
    from injector import registry

    registry.connect(_home().ensure())
    version = registry.resolve_version(version)
    current = registry.champion()
    tags = registry.version_tags(version)
    if not force:
        if tags.get("gate") != "pass":
            raise InjectorError(f"version {version} did not pass its gate; use --force to promote anyway")
        if current is not None and tags.get("compared_with") != f"v{current}":
            raise InjectorError(f"version {version} was gated against {tags.get('compared_with')}, but the champion "
                                f"is now v{current}: retrain/re-gate it, or use --force")
    if not registry.move_champion(version, current, "forced" if force else "promote: gate passed"):
        raise InjectorError("the champion changed while promoting; try again")
    ledger = _follow(version, quiet=json_out)
    if json_out:
        print(json.dumps({"champion": version, "previous": current, "forced": force, "ledger": ledger}))
        return
    print(f"champion: v{current} -> v{version}" if current else f"champion: v{version}")


def _follow(version: str, quiet: bool = False) -> dict | None:
    """Put the ledger in step with the new champion: facts it does not know become pending again."""
    from injector.ledger import Ledger

    ledger = Ledger(_home().ensure().ledger)
    try:
        if not ledger.knows(version):
            print(f"warning: the ledger has no record of what v{version} learned (registered before this was "
                  "tracked); `injector facts` may not match it", file=sys.stderr)
            return None
        known, pending = ledger.follow_champion(version)
    finally:
        ledger.close()
    if not quiet:
        print(f"ledger: the champion v{version} knows {known} active facts; {pending} pending (trained by the next "
              "run)")
    return {"known": known, "pending": pending}


@app.command()
def rollback(json_out: bool = JSON) -> None:
    """Move the champion back to the previous champion (recorded in the registry)."""
    from injector import registry
    from injector.lock import single_flight

    home = _home().ensure()
    with single_flight(home.root, "injector rollback"):
        registry.connect(home)
        old, new = registry.rollback()
        ledger = _follow(new, quiet=json_out)
    if json_out:
        print(json.dumps({"champion": new, "previous": old, "ledger": ledger}))
        return
    print(f"champion: v{old} -> v{new} (rolled back)")


@app.command()
def nightly(
    source: Path = typer.Option(..., "--source", "-s", help="Drop file or directory of drop files."),
    config: Path | None = CONFIG,
    overrides: list[str] | None = OVERRIDES,
) -> None:
    """Run the Prefect nightly-update flow once, now (ephemeral Prefect unless PREFECT_API_URL is set)."""
    import importlib.util

    from injector.config import packaged

    path = packaged("flows") / "nightly_update.py"
    spec = importlib.util.spec_from_file_location("nightly_update", path)
    if spec is None or not path.exists():
        raise InjectorError(f"flow not found: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _config(config, overrides)  # a bad config fails here, with one line, before Prefect starts
    result = module.nightly_update(source=str(source), config=str(config) if config else None,
                                   overrides=list(overrides or []))
    print(json.dumps(result, indent=2, default=str))
    raise typer.Exit(result.get("exit_code", 0))


@app.command()
def bench(
    benchmarks: str = typer.Option("zsre,mquake", "--benchmarks", "-b", help="Comma-separated: zsre, mquake."),
    n: int = typer.Option(100, "--n", help="Facts (zsRE records / MQuAKE cases) in the seeded slice."),
    data: Path = typer.Option(Path("../shared/benchmarks"), "--data", help="Folder holding the benchmark JSON "
                                                                           "files (read-only; see its MANIFEST)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Pipeline config of every row (default: the "
                                                                   "built-in defaults, as `injector train`)."),
    variants: str = typer.Option(",".join(["injector", "naive LoRA", "no replay", "no EWC"]), "--variants",
                                 help="Comma-separated trained rows: injector, naive LoRA, no replay, no EWC, "
                                      "no distillation."),
    nights: int = typer.Option(5, "--nights", help="Continual run: the slice in this many nightly batches "
                                                   "(0 skips it)."),
    seed: int = typer.Option(0, "--seed"),
    work: Path | None = typer.Option(None, "--work", help="Where the rows' INJECTOR_HOMEs go (default: "
                                                          "INJECTOR_HOME/bench; replaced on every run)."),
    out: Path | None = typer.Option(Path("docs/BENCHMARKS.md"), "--out", help="Markdown file whose generated "
                                                                              "section is replaced (--out '' skips)."),
    json_out: bool = typer.Option(False, "--json", help="Print the raw results as one JSON object on stdout "
                                                        "(the tables go to stderr)."),
    results: Path | None = typer.Option(None, "--results", help="Also write the raw results to this file."),
    in_context: bool = typer.Option(True, "--in-context/--no-in-context", help="The in-context baseline row (the "
                                                                              "facts stated in the prompt)."),
    overrides: list[str] | None = OVERRIDES,
) -> None:
    """Injection quality and speed on third-party benchmarks (zsRE, MQuAKE-CF) against baselines: one table each."""
    from injector import bench as B

    names = [b.strip() for b in benchmarks.split(",") if b.strip()]
    rows = [v.strip() for v in variants.split(",") if v.strip()]
    for b in names:
        if b not in B.BENCHMARKS:
            raise InjectorError(f"--benchmarks: unknown benchmark {b!r} (known: {', '.join(B.BENCHMARKS)})")
    for v in rows:
        if v not in B.VARIANTS:
            raise InjectorError(f"--variants: unknown row {v!r} (known: {', '.join(B.VARIANTS)})")
    _config(config, overrides)  # a bad config fails before any work
    home = _home().ensure()
    work = work or home.root / "bench"
    raw: dict = {}
    for b in names:
        sl = B.load_slice(b, data, n, seed)
        raw[b] = B.run_benchmark(sl, config, list(overrides or []), work, rows, nights, home.models,
                                 log=lambda *a: print(*a, file=sys.stderr), context_row=in_context)
        table = B.tables({b: raw[b]})
        print(table, flush=True, file=sys.stderr if json_out else sys.stdout)
        if out and str(out) not in ("", "."):  # each benchmark's block as soon as it is done
            cmd = "injector bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "injector bench"
            B.write_doc(out, b, B.header(cmd, n, seed) + "\n" + table)
            print(f"wrote the {b} block of {out}", file=sys.stderr)
        if results:
            results.write_text(json.dumps(raw, indent=2, default=str))
    if json_out:
        print(json.dumps(raw, indent=2, default=str))


def main() -> None:
    import errno
    import sqlite3

    try:
        app()
    except InjectorError as e:
        print(f"injector: error: {e}", file=sys.stderr)
        if "--json" in sys.argv:  # a refused command still prints its JSON: the error, the exit code, any summary
            print(json.dumps({**getattr(e, "summary", {}), "error": str(e), "exit_code": e.exit_code}))
        sys.exit(e.exit_code)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"injector: error: disk full writing {e.filename or 'a file'} ({e.strerror}); free space and run "
              "again (the ledger, the champion and the last complete checkpoint are intact)", file=sys.stderr)
        sys.exit(EXIT_INFRA)
    except sqlite3.OperationalError as e:
        if "full" not in str(e) and "disk" not in str(e):
            raise
        print(f"injector: error: SQLite: {e}; free space and run again (the transaction was rolled back)",
              file=sys.stderr)
        sys.exit(EXIT_INFRA)
    except KeyboardInterrupt:
        print("injector: interrupted", file=sys.stderr)
        sys.exit(130)
