"""The per-request metrics every service exports, counted without prometheus_client's locks."""

from __future__ import annotations

import prometheus_client

from corral.runtime.http import ServiceMetrics


def test_requests_and_latency_buckets_are_exposed_as_prometheus_counters_and_histograms() -> None:
    metrics = ServiceMetrics("unit")
    for seconds in (0.0004, 0.0005, 0.002, 40.0):
        metrics.observe_request("send", "ok", seconds)
    metrics.observe_request("send", "TIMEOUT", 1.0)
    lines = prometheus_client.generate_latest(metrics.registry).decode().splitlines()
    assert 'corral_unit_requests_total{endpoint="send",outcome="ok"} 4.0' in lines
    assert 'corral_unit_requests_total{endpoint="send",outcome="TIMEOUT"} 1.0' in lines
    bucket = 'corral_unit_request_duration_seconds_bucket{endpoint="send",le="%s"} %s'
    assert bucket % ("0.0005", "2.0") in lines  # a bound includes itself, as Prometheus' `le`
    assert bucket % ("0.0025", "3.0") in lines
    assert bucket % ("1.0", "4.0") in lines
    assert bucket % ("30.0", "4.0") in lines
    assert bucket % ("+Inf", "5.0") in lines
    assert 'corral_unit_request_duration_seconds_count{endpoint="send"} 5.0' in lines
    assert 'corral_unit_request_duration_seconds_sum{endpoint="send"} 41.0029' in lines
