"""Read the figures out of ``wrk``'s text report (``--latency``), for the benchmarks."""

from __future__ import annotations

import re
from typing import Any


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, p50/p99 in ms, errors (non-2xx/3xx + socket errors), requests; with
    the share of personalised answers when the run's Lua script printed it."""
    def ms(v: str) -> float:
        num, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()  # type: ignore[union-attr]
        return float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    total = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    out: dict[str, Any] = {"api_rps": round(rps, 1), "api_p50_ms": round(ms(lat["50"]), 3),
                           "api_p99_ms": round(ms(lat["99"]), 3), "errors": errors,
                           "requests": total}
    share = re.search(r"personalized (\d+) of (\d+)", text)
    if share:  # counted by the Lua script on every answer during the run
        out["personalized_share"] = round(int(share.group(1)) / max(1, int(share.group(2))), 4)
        out["answers_counted"] = int(share.group(2))
    partial = re.search(r"partial (\d+) of (\d+)", text)
    if partial:  # filtered answers with fewer than k items
        out["partial_share"] = round(int(partial.group(1)) / max(1, int(partial.group(2))), 4)
    return out
