"""The OpenAPI schema, and Schemathesis fuzzing every operation in it: never a 5xx, and
every answer as the schema documents it (its status code, content type and body)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from webapp.accounts.models import ApiToken
from webapp.searches import models as m

EXAMPLES = 15  # per operation and mode: about a second each
OPERATIONS = {
    "/api/teams": {"get"},
    "/api/searches": {"get", "post"},
    "/api/searches/{id}": {"get"},
    "/api/searches/{id}/cancel": {"post"},
    "/api/searches/{id}/pause": {"post"},
    "/api/searches/{id}/resume": {"post"},
    "/api/searches/{id}/architectures": {"get"},
    "/api/searches/{id}/selections": {"get", "post"},
    "/api/searches/{id}/rungs": {"get"},
    "/api/selections/{id}": {"get"},
    "/api/selections/{id}/cancel": {"post"},
    "/api/architectures/{id}": {"get"},
    "/api/architectures/{id}/genotype": {"get"},
    "/api/training-jobs": {"get", "post"},
    "/api/training-jobs/{id}": {"get"},
    "/api/training-jobs/{id}/cancel": {"post"},
    "/api/training-jobs/{id}/bundle": {"get"},
    "/api/transfer-presets": {"get"},
}


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_the_schema_is_openapi_3_json_and_lists_every_operation(client, db):
    r = client.get("/api/openapi.json")
    assert r.status_code == 200 and r["Content-Type"] == "application/json"
    schema = r.json()
    assert schema["openapi"].startswith("3.")
    assert {path: set(ops) for path, ops in schema["paths"].items()} == OPERATIONS
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from `manage.py issuetoken`.",
    }
    ids = [op["operationId"] for ops in schema["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_the_schema_generates_without_warnings(tmp_path):
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    assert "/api/searches/{id}/architectures" in (tmp_path / "schema.yml").read_text()


def test_there_is_no_swagger_ui_loading_from_a_cdn(client, db):
    for url in ("/api/docs", "/api/swagger", "/api/schema/swagger-ui/"):
        assert client.get(url).status_code == 404


@pytest.fixture
def keep_test_connection():
    """A bare WSGI handler closes the DB connection after each request (which would end
    the test's transaction); Django's test client unhooks that signal the same way."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def api_schema(personas, keep_test_connection):
    """The schema as the app serves it, called in-process over WSGI as the member."""
    from django.core.wsgi import get_wsgi_application

    search = m.Search.objects.create(
        team=personas.alpha, owner=personas.owner, name="fuzzed", spec={}, children_total=2, status=m.RUNNING
    )
    arch = m.Architecture.objects.create(
        search=search, sample_index=0, genotype={}, canonical_hash="0" * 64, reward=0.5
    )
    # issue #13: a stopped child, a reused one, and an early-stopping decision
    stopped = m.Architecture.objects.create(search=search, sample_index=1, genotype={}, canonical_hash="1" * 64)
    m.ChildRun.objects.create(architecture=stopped, status=m.RUN_STOPPED, reward=0.3, epochs=[{"epoch": 1}])
    reused = m.Architecture.objects.create(
        search=search, sample_index=2, genotype={}, canonical_hash="0" * 64, reward=0.5, reused_from=arch
    )
    m.ChildRun.objects.create(architecture=reused, status=m.RUN_REUSED, reward=0.5)
    m.RungDecision.objects.create(search=search, sample_index=1, epoch=1, statistic=0.3, value=0.3, stop=True)
    m.TrainingJob.objects.create(
        team=personas.alpha, owner=personas.owner, name="j", genotype={}, dataset={}, recipe={}, bundle_path="../x"
    )
    return schemathesis.openapi.from_wsgi("/api/openapi.json", get_wsgi_application())


@pytest.fixture
def member_token(personas):
    return ApiToken.issue(personas.member)[1]


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_no_operation_answers_a_5xx_to_a_member(api_schema, member_token, personas, mode):
    """Every operation, valid and invalid requests, a few examples each (Schemathesis'
    pytest plugin trips over pytest 9's node ids, so its strategies drive Hypothesis here)."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

    headers = {"Authorization": f"Bearer {member_token}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == sum(len(ops) for ops in OPERATIONS.values())
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case):
            if mode == schemathesis.GenerationMode.POSITIVE and isinstance(case.body, dict) and "team" in case.body:
                case.body["team"] = personas.alpha.id  # get past the team check to the spec's validation
            response = case.call(headers=headers)
            case.validate_response(response, checks=checks)
            if response.status_code >= 400 and response.headers.get("Content-Type") == "application/json":
                assert set(response.json()) == {"field", "error"}, (case.method, case.formatted_path, response.text)

        fuzz()
