"""The JSON API against its own OpenAPI document (schemathesis): whatever the input,
no 5xx, and every response matches what the document says."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.content import editions
from newsletter.delivery import runner
from newsletter.delivery.providers.files import OutboxProvider
from newsletter.models import StaffRole
from newsletter.staff import api_tokens
from newsletter.web.app import create_app
from tests import factories

TOKENS: dict[str, str] = {}


@pytest.fixture
def api_schema(settings: Settings, sessions: sessionmaker[Session]) -> Any:
    """The API of an app with one sent edition, loaded from its own document."""
    with sessions.begin() as s:
        for i in range(3):
            factories.subscriber(s, f"reader{i}@example.org")
        factories.story(s)
        eid = editions.build_edition(s, settings=settings, slug="daily-briefing")[0].id
        _, TOKENS["admin"] = api_tokens.create(s, name="schema", role=StaffRole.ADMIN)
    runner.send_edition(
        sessions, settings=settings, edition_id=eid, provider=OutboxProvider(settings.outbox_path)
    )
    app = create_app(settings)
    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)


def test_the_api_keeps_to_its_document(api_schema: Any) -> None:
    headers = {"Authorization": f"Bearer {TOKENS['admin']}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 6
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            database=None,
        )
        def check(case: Any) -> None:
            # Every check but "schema-valid input is accepted": a page cursor is
            # opaque text the API made, and one it did not make is rightly a 400.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()


def test_odd_paths_under_the_api_get_json_not_a_page(settings: Settings, engine: object) -> None:
    with TestClient(create_app(settings)) as client:
        for path in ("/api/v1/editions/%0A", "/api/v1/nothing-here", "/api/v2/deliveries"):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert answer.json()["code"] in ("api.not_found",), path
