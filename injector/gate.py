"""The promotion gate: a pure decision over an evaluation's metrics. No I/O besides loading thresholds."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from injector.errors import InjectorError
from injector.records import Check, GateDecision


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Absolute(_Strict):
    min_efficacy: float = Field(0.85, ge=0, le=1)
    min_generalisation: float = Field(0.5, ge=0, le=1)
    min_changed: float = Field(0.85, ge=0, le=1)
    # held-out phrasings of another family (eval/phrasings.<lang>.yaml); None: reported, not gated
    min_other_family: float | None = Field(None, ge=0, le=1)
    # gated only where the reference meets it with the latency ratio's room (else reported as information): the
    # same weights answer in 381 ms on one 2-core machine and 753 ms on another; what a candidate can change is
    # caught by the ratios below
    max_latency_ms_p95: float = Field(500.0, gt=0)
    max_kl_drift: float | None = Field(None, gt=0)  # nats/token; None: reported, not gated


class Relative(_Strict):
    min_locality_ratio: float = Field(0.9, ge=0)
    min_retention_ratio: float = Field(0.9, ge=0)
    min_neighbourhood_ratio: float | None = Field(None, ge=0)  # the batch subjects' other relations (`neighbourhood`)
    max_general_ppl_increase: float | None = Field(0.05, ge=0)  # (ppl_after / ppl_ref) - 1
    # candidate p95 / reference p95, timed in the same process on the same probes, interleaved: a merged LoRA adapter
    # has the base's architecture, so only its answer length can make it slower
    max_latency_ratio: float | None = Field(1.5, gt=0)
    # the candidate's mean answer length in tokens on the timed (general-knowledge) probes / the reference's
    max_answer_tokens_ratio: float | None = Field(1.5, gt=0)
    min_fact_ppl_drop: float | None = Field(None, ge=0, lt=1)  # 1 - (ppl_after / ppl_ref) on fact statements
    # against the base model as well, where the reference is an earlier champion: the ratios above compare with the
    # champion the candidate replaces, so what each night may lose could add up over nights (0.9 a night: 0.59 after
    # five). Locality: the candidate's general-knowledge accuracy / the base's, on the same probes. PPL: None is
    # reported, not gated
    min_locality_vs_base: float | None = Field(0.85, ge=0)
    max_general_ppl_increase_vs_base: float | None = Field(None, ge=0)


class Thresholds(_Strict):
    absolute: Absolute = Absolute()
    relative: Relative = Relative()


def load_thresholds(path: Path) -> Thresholds:
    try:
        tree = yaml.safe_load(path.read_text()) or {}
        return Thresholds.model_validate(tree)
    except FileNotFoundError:
        raise InjectorError(f"gate thresholds not found: {path}") from None
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise InjectorError(f"{path}: {key}: {'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}") \
            from None


def _check(name: str, value: float | None, bound: float, op: str) -> Check:
    v = float("nan") if value is None else float(value)
    ok = math.isfinite(v) and (v >= bound if op == ">=" else v <= bound)  # NaN or missing fails
    return Check(name=name, value=v, bound=bound, op=op, passed=ok)


def decide(metrics: dict[str, float], thresholds: Thresholds, reference: dict[str, float] | None = None,
           compared_with: str = "base") -> GateDecision:
    """Pass only when every applicable check passes.

    `metrics` holds accuracy per probe kind (`efficacy`, `generalisation`, `changed`, `locality`,
    `retention`) with their counts (`n_<kind>`), and `latency_ms_p95`. Efficacy and latency always apply
    (an empty efficacy set fails); the others apply when their probe set is non-empty.
    """
    a, r = thresholds.absolute, thresholds.relative
    n = lambda k: metrics.get(f"n_{k}", 0)  # noqa: E731
    ref_p95 = (reference or {}).get("latency_ms_p95")
    ref_timed = ref_p95 is not None and math.isfinite(ref_p95) and ref_p95 > 0
    latency = _check("latency_ms_p95", metrics.get("latency_ms_p95"), a.max_latency_ms_p95, "<=")
    # the bar binds where the reference meets it with room for the slowdown the ratio check tolerates: between
    # bar / max_latency_ratio and the bar, a candidate as fast as the reference crosses it on one longer answer (a
    # p95 over a dozen probes is the second-longest answer's time; continual MQuAKE night 4 at stop 25: reference
    # 429 ms, candidate 879 ms, equal-length ratio 0.945, same mean answer length; docs/BENCHMARKS.md). There the
    # machine, not the candidate, decides it: information, with speed and length gated by the ratios
    room = r.max_latency_ratio or 1.0
    if ref_timed and ref_p95 * room > a.max_latency_ms_p95:
        latency = Check(latency.name, latency.value, latency.bound, latency.op, passed=True, gated=False)
    checks = [
        _check("efficacy", metrics.get("efficacy") if n("efficacy") else None, a.min_efficacy, ">="),
        latency,
    ]
    if ref_timed and r.max_latency_ratio is not None:
        # speed on equal work where both were timed so (evaluate.paired_latency): a free answer's time is its length
        key = "latency_ms_p95_equal_length"
        ref_eq = (reference or {}).get(key)
        equal = ref_eq is not None and math.isfinite(ref_eq) and ref_eq > 0 and key in metrics
        ratio = metrics[key] / ref_eq if equal else metrics.get("latency_ms_p95", math.nan) / ref_p95
        checks.append(_check("latency_ratio", ratio, r.max_latency_ratio, "<="))
    ref_tokens = (reference or {}).get("answer_tokens")
    if r.max_answer_tokens_ratio is not None and ref_tokens and math.isfinite(ref_tokens) and \
            "answer_tokens" in metrics:
        checks.append(_check("answer_tokens_ratio", metrics["answer_tokens"] / ref_tokens, r.max_answer_tokens_ratio,
                             "<="))
    if n("generalisation"):
        checks.append(_check("generalisation", metrics.get("generalisation"), a.min_generalisation, ">="))
    if n("changed"):
        checks.append(_check("changed", metrics.get("changed"), a.min_changed, ">="))
    if n("other_family") and a.min_other_family is not None:
        checks.append(_check("other_family", metrics.get("other_family"), a.min_other_family, ">="))
    for kind, bound in (("locality", r.min_locality_ratio), ("retention", r.min_retention_ratio),
                        ("neighbourhood", r.min_neighbourhood_ratio)):
        if not n(kind) or bound is None:
            continue
        ref = (reference or {}).get(kind)
        if ref is None or not math.isfinite(ref):
            checks.append(_check(f"{kind}_ratio", None, bound, ">="))
        else:
            ratio = metrics.get(kind, float("nan")) / ref if ref > 0 else 1.0  # nothing to lose when ref is 0
            checks.append(_check(f"{kind}_ratio", ratio, bound, ">="))
    ref = reference or {}
    if r.max_general_ppl_increase is not None and "general_ppl" in metrics:
        ratio = metrics["general_ppl"] / ref["general_ppl"] - 1 if ref.get("general_ppl") else None
        checks.append(_check("general_ppl_increase", ratio, r.max_general_ppl_increase, "<="))
    if r.min_fact_ppl_drop is not None and "fact_ppl" in metrics:
        drop = 1 - metrics["fact_ppl"] / ref["fact_ppl"] if ref.get("fact_ppl") else None
        checks.append(_check("fact_ppl_drop", drop, r.min_fact_ppl_drop, ">="))
    base_loc = ref.get("base_locality")
    if r.min_locality_vs_base is not None and n("locality") and base_loc is not None and math.isfinite(base_loc):
        ratio = metrics.get("locality", float("nan")) / base_loc if base_loc > 0 else 1.0
        checks.append(_check("locality_vs_base", ratio, r.min_locality_vs_base, ">="))
    if ref.get("base_general_ppl") and "general_ppl" in metrics:
        rise = metrics["general_ppl"] / ref["base_general_ppl"] - 1
        bound = r.max_general_ppl_increase_vs_base
        check = _check("general_ppl_increase_vs_base", rise, math.inf if bound is None else bound, "<=")
        checks.append(check if bound is not None else replace(check, passed=True, gated=False))
    if a.max_kl_drift is not None and "kl_drift" in metrics:
        checks.append(_check("kl_drift", metrics["kl_drift"], a.max_kl_drift, "<="))
    return GateDecision(passed=all(c.passed for c in checks), checks=tuple(checks), compared_with=compared_with)


def metrics_of(report) -> dict[str, float]:
    """Flatten an EvalReport into the metrics the gate and the registry use."""
    out: dict[str, float] = {}
    for kind, row in report.by_kind().items():
        out[kind] = row["accuracy"]
        out[f"n_{kind}"] = row["n"]
    out["latency_ms_p50"] = report.latency_ms_p50
    out["latency_ms_p95"] = report.latency_ms_p95
    out.update({k: float(v) for k, v in report.extra.items() if isinstance(v, int | float)})
    return out
