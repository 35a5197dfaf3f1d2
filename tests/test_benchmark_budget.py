"""``benchmark --budget-ms``: budgets that exclude variants, live (robust to machine speed) and from a saved report."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from efficientdet.benchmark import BenchResult
from efficientdet.cli import main


def test_live_budget_excludes_the_first_variant_and_skips_the_larger_ones(tmp_path, capsys):
    # no machine runs a detector in 1 microsecond: lite0 is measured and excluded, d0 and d1 are never built
    out = tmp_path / "bench.json"
    rc = main(["benchmark", "--models", "lite0,d0,d1", "--image-size", "128", "--runs", "1", "--warmup", "1",
               "--json", str(out), "--budget-ms", "0.001"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert [r["model"] for r in report["results"]] == ["efficientdet_lite0"]
    assert report["results"][0]["latency_ms"] > 0.001
    assert report["within_budget"] is None and report["over_budget"] == ["efficientdet_lite0"]
    assert report["skipped"] == ["efficientdet_d0", "efficientdet_d1"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("largest variant within 0.001 ms: none; over budget: efficientdet_lite0 (")
    assert last.endswith("; skipped: efficientdet_d0, efficientdet_d1")


def _row(model: str, latency_ms: float) -> dict:
    return asdict(BenchResult(model=model, image_size=512, params=1, flops=1, latency_ms=latency_ms,
                              preprocess_ms=1.0, network_ms=latency_ms - 2, postprocess_ms=1.0,
                              throughput_ips=1000 / latency_ms, batch_size=1, runs=20))


@pytest.fixture
def saved_report(tmp_path):
    """A report as ``benchmark --json`` writes it, with fixed latencies (ms): d0 12, d1 25, d2 61.5, d3 140."""
    rows = [_row("efficientdet_d0", 12.0), _row("efficientdet_d1", 25.0), _row("efficientdet_d2", 61.5),
            _row("efficientdet_d3", 140.0)]
    path = tmp_path / "measured.json"
    path.write_text(json.dumps({"machine": "target", "budget_ms": None, "within_budget": None, "results": rows}))
    return path


@pytest.mark.parametrize(
    ("budget", "within", "over", "skipped", "line"),
    [
        (30, "efficientdet_d1", ["efficientdet_d2"], ["efficientdet_d3"],
         "largest variant within 30 ms: efficientdet_d1; over budget: efficientdet_d2 (61.5 ms); "
         "skipped: efficientdet_d3"),
        (61.5, "efficientdet_d2", ["efficientdet_d3"], [],  # a latency equal to the budget fits
         "largest variant within 61.5 ms: efficientdet_d2; over budget: efficientdet_d3 (140.0 ms)"),
        (11.9, None, ["efficientdet_d0"], ["efficientdet_d1", "efficientdet_d2", "efficientdet_d3"],
         "largest variant within 11.9 ms: none; over budget: efficientdet_d0 (12.0 ms); "
         "skipped: efficientdet_d1, efficientdet_d2, efficientdet_d3"),
        (1000, "efficientdet_d3", [], [], "largest variant within 1000 ms: efficientdet_d3"),
    ],
)
def test_budget_from_a_saved_report(tmp_path, capsys, saved_report, budget, within, over, skipped, line):
    out = tmp_path / "choice.json"
    assert main(["benchmark", "--from-json", str(saved_report), "--budget-ms", str(budget), "--json", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == line
    assert sum(row.startswith("efficientdet_d") for row in printed) == 4  # the table shows every saved row
    report = json.loads(out.read_text())
    assert (report["budget_ms"], report["within_budget"], report["over_budget"], report["skipped"]) == (
        budget, within, over, skipped)
    assert report["machine"] == "target" and len(report["results"]) == 4


def test_from_json_errors_are_one_line(tmp_path, capsys, saved_report):
    assert main(["benchmark", "--from-json", str(saved_report)]) == 2
    assert "--from-json needs --budget-ms" in capsys.readouterr().err
    assert main(["benchmark", "--from-json", str(tmp_path / "nope.json"), "--budget-ms", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope.json" in err and "\n" not in err
    (tmp_path / "other.json").write_text('{"results": [{"model": "d0"}]}')
    assert main(["benchmark", "--from-json", str(tmp_path / "other.json"), "--budget-ms", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a report written by 'benchmark --json'" in err and "\n" not in err
