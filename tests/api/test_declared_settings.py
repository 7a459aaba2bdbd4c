"""The API's variant settings are derived from the detector's declarations: every declared
bound, choice and null rule appears in the OpenAPI schema and is enforced with a 422, and
every value just inside is accepted. Nothing here names a setting; a new one is covered by
declaring it."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.detector.config import SETTINGS
from tests.setting_cases import CASES

_JSON_SCHEMA_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum",
                       "lt": "exclusiveMaximum"}


def _branches(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The non-null schema of a property, and whether null is allowed too."""
    if "anyOf" not in prop:
        return prop, False
    others = [b for b in prop["anyOf"] if b.get("type") != "null"]
    assert len(others) == 1, prop
    return others[0], len(others) < len(prop["anyOf"])


def test_openapi_schemas_carry_every_declaration(client: TestClient) -> None:
    components = client.get("/openapi.json").json()["components"]["schemas"]
    request, response = components["VariantSettings"], components["VariantSettingsPublic"]
    names = [s.name for s in SETTINGS]
    assert list(request["properties"]) == names and list(response["properties"]) == names
    assert request.get("required", []) == [] and response["required"] == names
    assert request["additionalProperties"] is False
    for s in SETTINGS:
        for schema in (request, response):
            prop = schema["properties"][s.name]
            assert prop["description"] == s.help
            branch, nullable = _branches(prop)
            # A request may send null (refused below unless the setting is nullable); a
            # response shows null only where the detector defaults to it.
            assert nullable == (schema is request or s.nullable), (s.name, prop)
            if s.choices:
                assert branch["enum"] == list(s.choices), (s.name, prop)
            else:
                assert "enum" not in branch
        request_branch, _ = _branches(request["properties"][s.name])
        found = {k: request_branch[v] for k, v in _JSON_SCHEMA_BOUNDS.items()
                 if v in request_branch}
        assert found == s.bounds, (s.name, request_branch)


def test_every_declared_rule_is_a_422_and_every_value_inside_is_accepted(
        client: TestClient, problem: Any) -> None:
    assert client.post("/v1/variants", json={"name": "patched"}).status_code == 201
    wrong = []
    for i, case in enumerate(CASES):
        created = client.post("/v1/variants", json={"name": f"v{i}", "settings": case.settings})
        patched = client.patch("/v1/variants/patched", json={"settings": case.settings})
        if case.allowed:
            if created.status_code != 201 or patched.status_code != 200:
                wrong.append((str(case), created.text, patched.text))
                continue
            for body in (created.json(), patched.json()):
                assert body["settings"][case.name] == case.value, (str(case), body)
            client.patch("/v1/variants/patched", json={"settings": {  # back to the defaults
                s.name: s.default for s in SETTINGS if s.name in case.settings}})
        else:
            if created.status_code != 422 or patched.status_code != 422:
                wrong.append((str(case), created.text, patched.text))
                continue
            problem(created, 422)
            problem(patched, 422)
    assert not wrong, wrong
