"""Human reports: the before/after table, markdown summary and PNG plots of a run."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from injector.records import EvalReport, GateDecision, TrainResult


def before_after_rows(before: EvalReport, after: EvalReport, kinds: tuple[str, ...] = ("efficacy",)) -> list[dict]:
    rows = []
    for b, a in zip(before.results, after.results):
        if b.probe.kind in kinds:
            rows.append({"question": b.probe.question, "expected": b.probe.answers[0], "before": b.answer,
                         "before_ok": b.correct, "after": a.answer, "after_ok": a.correct})
    return rows


def print_before_after(before: EvalReport, after: EvalReport, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="Injected facts: answers before and after training (trained phrasing)", show_lines=False)
    for col in ("question", "expected", "before", "after"):
        table.add_column(col, overflow="fold", max_width=48 if col in ("before", "after") else 40)
    for r in before_after_rows(before, after):
        mark = lambda ok: "[green]✓[/]" if ok else "[red]✗[/]"  # noqa: E731
        table.add_row(r["question"], r["expected"], f"{mark(r['before_ok'])} {r['before'][:80]}",
                      f"{mark(r['after_ok'])} {r['after'][:80]}")
    console.print(table)
    kinds = sorted(set(before.by_kind()) | set(after.by_kind()))
    summary = Table(title="Accuracy by probe kind (judged on generated answers)")
    for col in ("kind", "n", "before", "after"):
        summary.add_column(col)
    for k in kinds:
        summary.add_row(k, str(after.by_kind().get(k, {}).get("n", 0)), f"{before.accuracy(k):.2f}",
                        f"{after.accuracy(k):.2f}")
    console.print(summary)


def print_gate(decision: GateDecision, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"Gate (relative checks vs {decision.compared_with}): "
                        f"{'PASS' if decision.passed else 'FAIL'}")
    for col in ("check", "value", "bound", "verdict"):
        table.add_column(col)
    for row in decision.table():
        table.add_row(row["check"], f"{row['value']:.3f}", row["bound"], row["verdict"])
    console.print(table)


def eval_json(report: EvalReport) -> dict:
    return {
        "by_kind": report.by_kind(),
        "overall": report.accuracy(),
        "latency_ms_p50": report.latency_ms_p50,
        "latency_ms_p95": report.latency_ms_p95,
        "hardware": report.hardware,
        "wall_s": report.wall_s,
        "extra": report.extra,
        "rows": [{**asdict(r.probe), "answer": r.answer, "correct": r.correct} for r in report.results],
    }


def write_run_report(out: Path, before: EvalReport, after: EvalReport, train: TrainResult,
                     decision: GateDecision) -> list[Path]:
    """eval.json, report.md and plots (accuracy by kind, loss curve, accuracy by relation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "eval_before.json", out / "eval_after.json", out / "gate.json"]
    files[0].write_text(json.dumps(eval_json(before), indent=2))
    files[1].write_text(json.dumps(eval_json(after), indent=2))
    files[2].write_text(json.dumps({"passed": decision.passed, "compared_with": decision.compared_with,
                                    "checks": decision.table()}, indent=2))

    kinds = sorted(after.by_kind())
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(kinds))
    ax.bar([x - 0.2 for x in xs], [before.accuracy(k) for k in kinds], 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [after.accuracy(k) for k in kinds], 0.4, label="after")
    ax.set_xticks(list(xs), kinds, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.legend()
    ax.set_title("Accuracy by probe kind")
    fig.tight_layout()
    fig.savefig(out / "accuracy_by_kind.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train.loss_history:
        ax.plot(*zip(*train.loss_history), label="train loss")
    if train.eval_history:
        ax.plot(*zip(*train.eval_history), "o-", label="dev loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("Loss")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)

    rels = sorted({r.probe.relation for r in after.results if r.probe.relation})
    acc = [sum(r.correct for r in after.results if r.probe.relation == rel) /
           max(1, sum(r.probe.relation == rel for r in after.results)) for rel in rels]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.barh(rels, acc)
    ax.set_xlim(0, 1.05)
    ax.set_title("Accuracy by relation (after)")
    fig.tight_layout()
    fig.savefig(out / "accuracy_by_relation.png", dpi=100)
    plt.close(fig)
    files += [out / "accuracy_by_kind.png", out / "loss.png", out / "accuracy_by_relation.png"]

    lines = [
        "# injector run", "",
        f"- examples trained: {train.n_examples}, steps: {train.steps}, epochs: {train.epochs:.1f}"
        f"{' (early stop)' if train.stopped_early else ''}",
        f"- train loss: {train.train_loss:.4f}, best dev loss: {train.best_eval_loss}",
        f"- train throughput: {train.tokens_per_s:.0f} tokens/s, wall {train.wall_s:.1f} s",
        f"- latency p50/p95: {after.latency_ms_p50:.0f}/{after.latency_ms_p95:.0f} ms on {after.hardware}"
        + (f" (reference, timed beside it: {after.extra['reference_latency_ms_p50']:.0f}/"
           f"{after.extra['reference_latency_ms_p95']:.0f} ms; answers {after.extra.get('answer_tokens', 0):.1f} vs "
           f"{after.extra.get('reference_answer_tokens', 0):.1f} tokens)" if "reference_latency_ms_p95" in after.extra
           else ""), "",
        f"## Gate: {'PASS' if decision.passed else 'FAIL'} (relative checks vs {decision.compared_with})", "",
        "| check | value | bound | verdict |", "|---|---|---|---|",
        *[f"| {r['check']} | {r['value']:.3f} | {r['bound']} | {r['verdict']} |" for r in decision.table()], "",
        "## Accuracy by kind", "", "| kind | n | before | after |", "|---|---|---|---|",
        *[f"| {k} | {after.by_kind()[k]['n']} | {before.accuracy(k):.2f} | {after.accuracy(k):.2f} |" for k in kinds],
        "", "![accuracy](accuracy_by_kind.png) ![loss](loss.png) ![relations](accuracy_by_relation.png)", "",
        "## Answers (trained phrasing)", "", "| question | expected | before | after |", "|---|---|---|---|",
        *[f"| {r['question']} | {r['expected']} | {r['before'][:60]} | {r['after'][:60]} |"
          for r in before_after_rows(before, after)],
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    files.append(out / "report.md")
    return files
