"""Prometheus metrics, declared in one place with bounded label values.

Labels take only fixed values: the listener name (mx, submission) and the
outcome classes below, never an address or a domain.
"""

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# No *_created series: they double the families listed, and rate() does not use them.
disable_created_metrics()

MESSAGES_ACCEPTED = Counter(
    "mta_messages_accepted_total", "Messages queued after a 250 reply.", ["listener"])
MESSAGES_REJECTED = Counter(
    "mta_messages_rejected_total", "Transactions refused at end of data.", ["listener", "reply_class"])
API_REQUESTS = Counter(
    "mta_api_requests_total", "HTTP API requests, by route template and status class (2xx, 4xx, 5xx).",
    ["route", "status_class"])
DELIVERIES = Counter(
    "mta_deliveries_total", "Recipient delivery outcomes.", ["outcome"])
DELIVERY_SECONDS = Histogram(
    "mta_delivery_latency_seconds", "Seconds from acceptance to delivery, per delivered recipient.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 14400, 86400))
QUEUE_DEPTH = Gauge(
    "mta_queue_depth", "Delivery rows in the queue, by state, read at scrape time.", ["state"],
    multiprocess_mode="max")
SPOOL_BATCH = Histogram(
    "mta_spool_commit_batch_messages", "Messages per group commit.",
    buckets=(1, 2, 5, 10, 20, 50, 100))
SITES_SUSPENDED = Gauge(
    "mta_sites_suspended", "Destination sites suspended after failed connections, as all nodes see them.",
    multiprocess_mode="max")
SITES_WAITING = Gauge(
    "mta_sites_waiting", "Destination sites with deliveries waiting for room in this worker's window.",
    multiprocess_mode="sum")
TLS_CERTIFICATE_EXPIRY = Gauge(
    "mta_tls_certificate_expiry_timestamp_seconds", "When each server certificate expires, as a Unix time.",
    ["name"], multiprocess_mode="max")
REMOTE_REPLIES = Counter(
    "mta_remote_replies_total", "Refusals and deferrals from remote servers, by class (mta.delivery.feedback).",
    ["reply_class"])
DKIM_RECORDS_MISSING = Gauge(
    "mta_dkim_records_missing", "Active DKIM keys whose TXT record the nameservers do not return, "
    "as worker 0 last checked them.", multiprocess_mode="max")
DKIM_RECORD_CHECK_FAILED = Gauge(
    "mta_dkim_record_check_failed", "1 when the last check of the active DKIM keys' records got no answer from "
    "the nameservers, so mta_dkim_records_missing is out of date; else 0.", multiprocess_mode="max")
AUDIT_LAG = Gauge(
    "mta_audit_lag_seconds", "Age of the oldest accepted message without its audit entry yet, read at scrape time "
    "(0 when the auditor is up to date).", multiprocess_mode="max")
NODES = Gauge(
    "mta_nodes", "Nodes in the node table by heartbeat, read at scrape time: alive (seen within 30 s) or lost "
    "(silent for 30 s to 1 h; older rows are left out).", ["state"], multiprocess_mode="max")
OUTBOUND_TLS_FAILURES = Counter(
    "mta_outbound_tls_failures_total", "Outbound connections that failed a required TLS level, "
    "by RFC 8460 result type.", ["result_type"])
INBOUND_TLS_FAILURES = Counter(
    "mta_inbound_tls_failures_total", "Failed STARTTLS handshakes of clients.", ["listener"])
STORE_ERRORS = Counter(
    "mta_store_errors_total", "Body store failures: write (at acceptance), delete (of an uncommitted body) "
    "or delivery (reading or deleting the body in a delivery attempt).", ["operation"])
WEBHOOK_ATTEMPTS = Counter(
    "mta_webhook_attempts_total", "Webhook POSTs, by result: delivered (2xx), retried, or failed (given up).",
    ["result"])
WEBHOOK_PENDING = Gauge(
    "mta_webhook_outbox_pending", "Webhook events not yet delivered or given up, per configured endpoint, "
    "read at scrape time.", ["endpoint"], multiprocess_mode="max")
WEBHOOK_OLDEST = Gauge(
    "mta_webhook_outbox_oldest_seconds", "Age of the oldest pending webhook event per configured endpoint "
    "(0 with none pending), read at scrape time.", ["endpoint"], multiprocess_mode="max")
