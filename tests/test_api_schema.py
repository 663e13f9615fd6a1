"""Schemathesis against the running API's own /openapi.json, on loopback, bounded in examples and time.

Generated requests must never get a 5xx, and every response must match the
status codes, media types and schemas that the document declares.
"""

from __future__ import annotations

import time

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from tests.test_api import api  # noqa: F401 (the module-scoped MTA fixture)

MAX_EXAMPLES = 200
TIME_LIMIT = 25.0
PATHS = r"^/(health|ready|v1/queue.*|v1/suppression|v1/audit/verify|v1/messages|v1/mailbox/.*|v1/gdpr/.*)$"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_api_conforms_to_openapi(api):  # noqa: F811
    schema = schemathesis.openapi.from_url(f"{api.base}/openapi.json", timeout=10).include(path_regex=PATHS)
    authorization = {"Authorization": f"Bearer {api.tokens['admin']}"}
    deadline = time.monotonic() + TIME_LIMIT
    calls = []

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy())
    def check(case):
        if time.monotonic() > deadline:
            return
        response = case.call(headers=authorization, timeout=10)
        calls.append((case.method, case.path, response.status_code))
        case.validate_response(response, checks=CHECKS, headers=authorization)

    check()

    assert len(calls) >= 20
