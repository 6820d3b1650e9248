"""``devstack.wrk.parse_wrk`` on a real ``wrk --latency`` report."""

from devstack.wrk import parse_wrk

REPORT = """Running 15s test @ http://127.0.0.1:8080
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.10ms    2.31ms  40.12ms   80.00%
    Req/Sec   965.33    100.12     1.10k    70.00%
  Latency Distribution
     50%    3.40ms
     75%    4.90ms
     90%    7.20ms
     99%   34.10ms
  14480 requests in 15.00s, 5.10MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 3
Requests/sec:    965.31
Transfer/sec:    348.20KB
"""


def test_parse_wrk_reads_rate_percentiles_and_every_error() -> None:
    assert parse_wrk(REPORT) == {"api_rps": 965.3, "api_p50_ms": 3.4, "api_p99_ms": 34.1,
                                 "errors": 6, "requests": 14480}


def test_parse_wrk_units() -> None:
    text = REPORT.replace("3.40ms", "850.00us").replace("34.10ms", "1.20s")
    out = parse_wrk(text)
    assert out["api_p50_ms"] == 0.85 and out["api_p99_ms"] == 1200.0


def test_parse_wrk_reads_the_personalised_share_when_printed() -> None:
    out = parse_wrk(REPORT + "personalized 900 of 1000\n")
    assert out["personalized_share"] == 0.9 and out["answers_counted"] == 1000
    assert "personalized_share" not in parse_wrk(REPORT)
