"""The HTTP API fuzzed from its own OpenAPI document against the real gateway.

schemathesis generates requests from the document the gateway serves, valid ones and
invalid ones (wrong types, missing fields, odd strings, bad headers), hypothesis drives
them, and each goes over HTTP to gunicorn. Every answer is checked: never a 5xx, always a
status the document lists, with the content type and body schema it declares.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from support import API_KEY, Gateway

EXAMPLES = 50
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_gateway(start_gateway) -> Iterator[Gateway]:
    gateway = start_gateway()
    yield gateway
    gateway.assert_unharmed()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(fuzz_gateway, mode):
    schema = schemathesis.openapi.from_url(fuzz_gateway.url + "/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # Every operation but the document itself, which schemathesis leaves out.
    assert len(operations) == sum(map(len, schema.raw_schema["paths"].values())) - 1
    if mode is GenerationMode.NEGATIVE:
        # Invalid bodies and queries; an invalid path id mostly cannot be put in a URL at
        # all (test_api checks the ones that can), so schemathesis finds too few to try.
        operations = [op for op in operations if op.body or op.query]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers_as_documented(case):
            case.call_and_validate(base_url=fuzz_gateway.url, checks=CHECKS,
                                   headers={"Authorization": f"Bearer {API_KEY}"})

        answers_as_documented()
