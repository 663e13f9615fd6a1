"""Webhooks: HTTP POSTs to configured endpoints when a message is accepted, delivered, deferred or bounced.

``outbox`` writes the events in the transaction of the change they report,
``dispatcher`` sends them with retries, and ``signature`` signs each body
with HMAC-SHA256 under the endpoint's secret.
"""
