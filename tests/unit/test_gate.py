"""The latency gate's verdict: thresholds, failed requests, endpoints never measured."""

from __future__ import annotations

from pathlib import Path

from clients_service.gate import DEFAULT_THRESHOLDS_MS
from dualwrite.control.gate import EndpointStats, judge, parse_stats_csv

SINGLE = "GET /workspaces/{ws}/clients/{id}"
BULK = "GET /workspaces/{ws}/clients?limit=100"


def test_passes_when_every_p95_is_under_its_limit() -> None:
    verdict = judge(
        [EndpointStats(SINGLE, 900, 0, 12.0), EndpointStats(BULK, 200, 0, 80.0)],
        DEFAULT_THRESHOLDS_MS,
    )
    assert verdict.passed and verdict.failures == []
    assert verdict.summary()["endpoints"][SINGLE]["p95_ms"] == 12.0


def test_fails_on_each_threshold_miss_failed_request_and_missing_endpoint() -> None:
    verdict = judge(
        [
            EndpointStats(SINGLE, 900, 0, 101.0),
            EndpointStats("POST /workspaces/{ws}/clients", 50, 2, 5.0),
        ],
        DEFAULT_THRESHOLDS_MS,
    )
    assert not verdict.passed
    assert f"{SINGLE}: p95 101 ms > 100 ms" in verdict.failures
    assert "POST /workspaces/{ws}/clients: 2 of 50 requests failed" in verdict.failures
    assert f"{BULK}: no requests measured" in verdict.failures


def test_parses_locust_stats_csv(tmp_path: Path) -> None:
    path = tmp_path / "gate_stats.csv"
    path.write_text(
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
        "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
        "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\n"
        f"GET,{SINGLE},1000,0,4,5.1,1,40,900,50.0,0.0,4,5,5,6,8,9,12,15,30,40,40\n"
        f'GET,"{BULK}",300,1,40,45,20,300,90000,15,0.05,40,45,50,55,70,85,120,200,300,300,300\n'
        ",Aggregated,1300,1,5,14,1,300,20000,65,0.05,5,6,8,10,40,60,85,110,300,300,300\n"
    )
    stats = parse_stats_csv(path)
    assert [(s.name, s.requests, s.failures, s.p95_ms) for s in stats] == [
        (SINGLE, 1000, 0, 9.0),
        (BULK, 300, 1, 85.0),
    ]
    assert not judge(stats, DEFAULT_THRESHOLDS_MS).passed  # one failed bulk request
