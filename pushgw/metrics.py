"""Every Prometheus metric pushgw exports, defined once."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

PLANNED_DEVICES = Counter(
    "pushgw_planned_devices_total",
    "Devices pushes reach, by transport: counted when a fan-out unit is first decoded by its sender, or when"
    " a planner resolves a one-batch audience.",
    ["transport"],
)
SKIPPED_DEVICES = Counter(
    "pushgw_skipped_devices_total",
    "Selected installations not counted because their token transport has no token (Parse skips them too).",
    ["device_type"],
)
BATCHES = Counter("pushgw_batches_total", "Send units processed, by outcome.", ["outcome"])
DEVICES = Counter(
    "pushgw_devices_total", "Device outcomes by outcome (sent/failed/deferred), transport and reason.",
    ["outcome", "transport", "reason"],
)  # fmt: skip
BATCH_SECONDS = Histogram(
    "pushgw_batch_seconds",
    "Time to process one send unit.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_LAG_SECONDS = Histogram(
    "pushgw_queue_lag_seconds",
    "Time from a push's acceptance to the start of one of its units, by queue.",
    ["queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
PUSHES_FINISHED = Counter("pushgw_pushes_finished_total", "Pushes that reached a final status.", ["status"])
DEAD_LETTERS = Counter(
    "pushgw_dead_letters_total", "Work items that reached the dead-letter queue.", ["kind"]
)
DEAD_LETTERS_PENDING = Gauge(
    "pushgw_dead_letters_pending",
    "Dead-lettered work items neither replayed nor finalized yet, per app (set by every worker's watchdog).",
    ["app_id"],
)
RUNNING_PUSH_IDLE_SECONDS = Gauge(
    "pushgw_running_push_idle_seconds",
    "Seconds since the least recently progressing running push last progressed (0: none running), per app.",
    ["app_id"],
)
RUNNING_PUSHES_PAST_EXPIRY = Gauge(
    "pushgw_running_pushes_past_expiry",
    "Pushes still running although their expiration time has passed, per app (set by the watchdog).",
    ["app_id"],
)
PARSE_ITEMS = Counter(
    "pushgw_parse_queue_items_total",
    "Parse Server push work items consumed: planned (handed to the planner) or ignored (push already final).",
    ["outcome"],
)

PROVIDER_SECONDS = Histogram(
    "pushgw_provider_request_seconds",
    "One request to APNs or FCM, from send to answer, by provider and answer (sent, a reason, or an error).",
    ["provider", "answer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONNECTION_STREAMS = Gauge(
    "pushgw_provider_connection_streams",
    "Per provider connection: the server's stream limit (`limit`) and the streams in flight (`in_flight`).",
    ["provider", "credential", "lane", "connection", "kind"],
)
JWT_AGE_SECONDS = Gauge(
    "pushgw_apns_jwt_age_seconds", "Age of the APNs provider token in use, per team and key.", ["team", "key"]
)
CERTIFICATE_DAYS_LEFT = Gauge(
    "pushgw_apns_certificate_days_left", "Days until an APNs client certificate expires.", ["credential"]
)
CREDENTIAL_PAUSES = Counter(
    "pushgw_provider_credential_pauses_total",
    "A credential was paused after the provider rejected it (bad key, certificate, project): alert on this.",
    ["provider", "credential", "reason"],
)
TOKENS_REMOVED = Counter(
    "pushgw_tokens_removed_total", "Device tokens unset by the invalid-token cleanup, by app and reason.",
    ["app_id", "reason"],
)  # fmt: skip
CLEANUP_SUSPENSIONS = Counter(
    "pushgw_token_cleanup_suspensions_total",
    "Token cleanup stopped by its circuit breaker (a burst of dead-token answers): alert on this.",
    ["app_id", "reason"],
)

PPNS_CONNECTIONS = Gauge("pushgw_ppns_connections", "Live PPNS device connections on this node.")
PPNS_HANDSHAKES = Counter(
    "pushgw_ppns_handshakes_total",
    "PPNS handshakes by outcome (ok, unknown_app, malformed, timeout, too_long, closed).",
    ["outcome"],
)
PPNS_PUSHES = Counter(
    "pushgw_ppns_pushes_total",
    "PPNS pushes by stage: stored (backlog), written (live), replayed (after a handshake), too_large.",
    ["stage"],
)
PPNS_WRITE_SECONDS = Histogram(
    "pushgw_ppns_write_seconds",
    "Time from a push's wake-up (or handshake) to its line being handed to the socket.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PPNS_BYTES_OUT = Counter("pushgw_ppns_bytes_out_total", "Bytes written to PPNS devices (before TLS).")
PPNS_RESETS = Counter(
    "pushgw_ppns_resets_total",
    "PPNS connections closed by the server with RST, by reason (replaced, eof, slow_reader, shutdown, …).",
    ["reason"],
)
