"""The gate is a pure function: table-driven cases at the threshold edges."""

import math

import pytest

from injector.gate import Absolute, Relative, Thresholds, decide

T = Thresholds(absolute=Absolute(min_efficacy=0.85, min_generalisation=0.5, min_changed=0.85,
                                 max_latency_ms_p95=500, max_kl_drift=0.3),
               relative=Relative(min_locality_ratio=0.9, max_general_ppl_increase=0.05, min_fact_ppl_drop=0.3))
OK = {"efficacy": 0.9, "n_efficacy": 10, "generalisation": 0.6, "n_generalisation": 20, "latency_ms_p95": 120.0}


@pytest.mark.parametrize(
    "change, reference, passed, failing",
    [
        ({}, None, True, []),
        ({"efficacy": 0.85}, None, True, []),  # at the bound passes
        ({"efficacy": 0.8499}, None, False, ["efficacy"]),
        ({"latency_ms_p95": 500.0}, None, True, []),
        ({"latency_ms_p95": 500.1}, None, False, ["latency_ms_p95"]),
        ({"efficacy": math.nan}, None, False, ["efficacy"]),  # NaN fails
        ({"n_efficacy": 0}, None, False, ["efficacy"]),  # empty probe set fails
        ({"latency_ms_p95": math.nan}, None, False, ["latency_ms_p95"]),
        ({"generalisation": 0.49}, None, False, ["generalisation"]),
        ({"n_generalisation": 0, "generalisation": 0.0}, None, True, []),  # not applicable
        ({"changed": 0.8, "n_changed": 5}, None, False, ["changed"]),
        ({"locality": 0.45, "n_locality": 20}, {"locality": 0.5}, True, []),  # 0.9 of the reference
        ({"locality": 0.44, "n_locality": 20}, {"locality": 0.5}, False, ["locality_ratio"]),
        ({"locality": 0.5, "n_locality": 20}, None, False, ["locality_ratio"]),  # no reference measured
        ({"locality": 0.0, "n_locality": 20}, {"locality": 0.0}, True, []),  # nothing to lose
        ({"general_ppl": 10.49}, {"general_ppl": 10.0}, True, []),  # just under +5%
        ({"general_ppl": 10.6}, {"general_ppl": 10.0}, False, ["general_ppl_increase"]),
        ({"general_ppl": 10.0}, None, False, ["general_ppl_increase"]),  # no reference: fails
        ({"general_ppl": math.nan}, {"general_ppl": 10.0}, False, ["general_ppl_increase"]),
        ({"fact_ppl": 7.0}, {"fact_ppl": 10.0}, True, []),  # 30% drop
        ({"fact_ppl": 7.5}, {"fact_ppl": 10.0}, False, ["fact_ppl_drop"]),
        ({"kl_drift": 0.3}, None, True, []),
        ({"kl_drift": 0.31}, None, False, ["kl_drift"]),
        # latency: the absolute bar binds only where the reference meets it; the ratio always binds
        ({"latency_ms_p95": 700.0}, {"latency_ms_p95": 650.0}, True, []),  # slow machine: info + ratio 1.08
        ({"latency_ms_p95": 1000.0}, {"latency_ms_p95": 650.0}, False, ["latency_ratio"]),  # 1.54 > 1.5
        # the reference meets the bar with the ratio's room (330 x 1.5 < 500): the candidate's longer answers cross it
        ({"latency_ms_p95": 501.0, "latency_ms_p95_equal_length": 400.0},
         {"latency_ms_p95": 330.0, "latency_ms_p95_equal_length": 400.0}, False, ["latency_ms_p95"]),
        # the reference meets the bar but not with the ratio's room: one longer answer of an equally fast candidate
        # crosses it (continual MQuAKE night 4, stop 25): information
        ({"latency_ms_p95": 879.0, "latency_ms_p95_equal_length": 879.0},
         {"latency_ms_p95": 429.0, "latency_ms_p95_equal_length": 929.0}, True, []),
        # timed at equal length too: the ratio is of speed on the same work, not of the longest free answers
        ({"latency_ms_p95": 1500.0, "latency_ms_p95_equal_length": 900.0},
         {"latency_ms_p95": 840.0, "latency_ms_p95_equal_length": 880.0}, True, []),
        ({"latency_ms_p95": 900.0, "latency_ms_p95_equal_length": 1400.0},
         {"latency_ms_p95": 880.0, "latency_ms_p95_equal_length": 880.0}, False, ["latency_ratio"]),
        # answer length on the timed probes, against the reference's
        ({"answer_tokens": 18.0}, {"answer_tokens": 12.0}, True, []),  # 1.5
        ({"answer_tokens": 18.5}, {"answer_tokens": 12.0}, False, ["answer_tokens_ratio"]),
        ({"answer_tokens": 18.5}, {}, True, []),  # the reference not timed: no ratio
        # against the base too where the reference is a champion: losses each night allows must not add up
        ({"locality": 0.9, "n_locality": 20}, {"locality": 0.9, "base_locality": 1.0}, True, []),
        ({"locality": 0.84, "n_locality": 20}, {"locality": 0.9, "base_locality": 1.0}, False, ["locality_vs_base"]),
        ({"locality": 0.0, "n_locality": 20}, {"locality": 0.0, "base_locality": 0.0}, True, []),  # nothing to lose
        # the general PPL against the base's is reported, not gated (no bound by default)
        ({"general_ppl": 10.4}, {"general_ppl": 10.0, "base_general_ppl": 5.0}, True, []),
    ],
)
def test_decide(change, reference, passed, failing):
    d = decide({**OK, **change}, T, reference=reference, compared_with="base")
    assert d.passed is passed
    if reference and reference.get("latency_ms_p95", 0) * 1.5 > 500:
        assert {r["check"]: r["verdict"] for r in d.table()}["latency_ms_p95"] == "info"
    assert [c.name for c in d.checks if not c.passed] == failing
    assert all({"check", "value", "bound", "verdict"} <= set(row) for row in d.table())


def test_every_check_is_reported_with_value_and_bound():
    d = decide({**OK, "locality": 0.6, "n_locality": 5}, T, reference={"locality": 0.6}, compared_with="v3")
    assert d.compared_with == "v3"
    names = [c.name for c in d.checks]
    assert names == ["efficacy", "latency_ms_p95", "generalisation", "locality_ratio"]
    assert d.checks[0].bound == 0.85 and d.checks[0].op == ">="


def test_shipped_thresholds_load():
    from pathlib import Path

    from injector.gate import load_thresholds

    t = load_thresholds(Path(__file__).resolve().parent.parent / "eval" / "gate.yaml")
    assert t.absolute.min_efficacy == 0.85 and t.absolute.max_latency_ms_p95 == 500


def test_bad_thresholds_file_names_the_key(tmp_path):
    from injector.errors import InjectorError
    from injector.gate import load_thresholds

    f = tmp_path / "gate.yaml"
    f.write_text("absolute:\n  min_efficacyy: 0.9\n")
    with pytest.raises(InjectorError, match="absolute.min_efficacyy: unknown key"):
        load_thresholds(f)


def test_other_family_is_reported_and_gated_only_when_a_bound_is_set():
    metrics = {**OK, "other_family": 0.3, "n_other_family": 20}
    assert decide(metrics, T).passed and "other_family" not in {c.name for c in decide(metrics, T).checks}
    strict = Thresholds(absolute=Absolute(min_other_family=0.5))
    d = decide(metrics, strict)
    assert not d.passed and [c.name for c in d.checks if not c.passed] == ["other_family"]


def test_neighbourhood_is_reported_and_gated_as_a_ratio_only_when_a_bound_is_set():
    metrics = {**OK, "neighbourhood": 0.6, "n_neighbourhood": 10}
    ref = {"neighbourhood": 1.0}
    assert "neighbourhood_ratio" not in {c.name for c in decide(metrics, T, ref).checks}
    strict = Thresholds(relative=Relative(min_neighbourhood_ratio=0.9, max_general_ppl_increase=None,
                                          max_latency_ratio=None, max_answer_tokens_ratio=None))
    d = decide(metrics, strict, ref)
    assert not d.passed and [c.name for c in d.checks if not c.passed] == ["neighbourhood_ratio"]
    assert decide({**metrics, "neighbourhood": 0.9}, strict, ref).passed


def test_drift_from_the_base_is_gated_on_locality_and_reported_on_ppl():
    """Every night's ratios compare with the champion it replaces; the base's numbers bound what all nights lose."""
    ref = {"locality": 0.9, "base_locality": 1.0, "general_ppl": 10.0, "base_general_ppl": 9.0}
    metrics = {**OK, "locality": 0.86, "n_locality": 50, "general_ppl": 10.2}
    d = decide(metrics, T, reference=ref, compared_with="v4")
    rows = {r["check"]: r for r in d.table()}
    assert d.passed and rows["locality_ratio"]["verdict"] == "pass"
    assert rows["locality_vs_base"]["value"] == pytest.approx(0.86) and rows["locality_vs_base"]["bound"] == ">= 0.85"
    assert rows["general_ppl_increase_vs_base"]["verdict"] == "info"
    assert rows["general_ppl_increase_vs_base"]["value"] == pytest.approx(10.2 / 9.0 - 1)
    strict = Thresholds(relative=Relative(min_locality_vs_base=0.9, max_general_ppl_increase_vs_base=0.1))
    failed = [c.name for c in decide(metrics, strict, reference=ref).checks if not c.passed]
    assert failed == ["locality_vs_base", "general_ppl_increase_vs_base"]
    # the base's own night (no base numbers in the reference) has no such checks
    assert not {"locality_vs_base", "general_ppl_increase_vs_base"} & {c.name for c in decide(metrics, T).checks}
