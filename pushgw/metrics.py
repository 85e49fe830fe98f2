"""Every Prometheus metric pushgw exports, defined once."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

INTAKE_REQUESTS = Counter(
    "pushgw_intake_requests_total",
    "Requests to POST {mount}/push by outcome (accepted, replayed, rejected_<status>, error).",
    ["outcome"],
)
INTAKE_LATENCY = Histogram(
    "pushgw_intake_request_seconds",
    "Time from request start to answer on POST {mount}/push.",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ORPHANS_FAILED = Counter(
    "pushgw_intake_unqueued_pushes_total",
    "Pushes whose _PushStatus was written but whose work item could not be queued (marked failed).",
)
