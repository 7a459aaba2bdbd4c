"""Variants: create, read, list, change, delete; names and settings validated where they enter."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def test_create_returns_201_with_resolved_default_settings(client: TestClient) -> None:
    response = client.post("/v1/variants", json={"name": "bolt-m8", "description": "top cam"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "bolt-m8"
    assert body["description"] == "top cam"
    assert body["settings"]["backbone"] == "efficientnet_lite2"  # the default preset's
    assert body["settings"]["resolution"] is None  # the backbone's default
    assert body["settings"]["coreset_ratio"] == 0.1
    assert body["settings"]["target_false_reject_rate"] == 0.01
    assert body["active_model_version"] is None
    assert body["n_good_images"] == 0
    assert response.headers["location"].endswith("/v1/variants/bolt-m8")


def test_duplicate_name_is_409(client: TestClient, problem: Any) -> None:
    assert client.post("/v1/variants", json={"name": "bolt"}).status_code == 201
    body = problem(client.post("/v1/variants", json={"name": "bolt"}), 409)
    assert "bolt" in body["detail"]
    assert body["type"].endswith("already-exists")


def test_get_list_patch_delete(client: TestClient, problem: Any) -> None:
    for name in ("b-variant", "a-variant", "c-variant"):
        assert client.post("/v1/variants", json={"name": name}).status_code == 201
    page = client.get("/v1/variants", params={"limit": 2}).json()
    assert [v["name"] for v in page["items"]] == ["a-variant", "b-variant"]
    assert page["total"] == 3
    page = client.get("/v1/variants", params={"limit": 2, "offset": 2}).json()
    assert [v["name"] for v in page["items"]] == ["c-variant"]

    response = client.patch("/v1/variants/a-variant",
                            json={"description": "new", "settings": {"resolution": 128}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["description"] == "new"
    assert body["settings"]["resolution"] == 128
    assert body["settings"]["coreset_ratio"] == 0.1  # untouched keys kept
    assert client.get("/v1/variants/a-variant").json()["settings"]["resolution"] == 128

    assert client.delete("/v1/variants/a-variant").status_code == 204
    problem(client.get("/v1/variants/a-variant"), 404)
    problem(client.delete("/v1/variants/a-variant"), 404)
    assert client.get("/v1/variants").json()["total"] == 2


def test_unknown_variant_is_404_problem(client: TestClient, problem: Any) -> None:
    body = problem(client.get("/v1/variants/nope"), 404)
    assert "nope" in body["detail"]
    problem(client.patch("/v1/variants/nope", json={"description": "x"}), 404)


def test_invalid_names_and_settings_are_422(client: TestClient, problem: Any) -> None:
    for name in ("Bolt", "-bolt", "bolt m8", "x" * 64, ""):
        problem(client.post("/v1/variants", json={"name": name}), 422)
    problem(client.get("/v1/variants/Not_A_Slug!"), 422)
    cases = [
        {"backbone": "resnet9000"},
        {"resolution": 8},
        {"coreset_ratio": 0},
        {"target_false_reject_rate": 0.7},
        {"augment": "sideways"},
        {"unknown_knob": 1},
        {"min_bank_size": 100, "max_bank_size": 10},
    ]
    for settings in cases:
        body = problem(client.post("/v1/variants", json={"name": "v", "settings": settings}), 422)
        assert body["detail"], settings
    # Nothing was stored by the rejected requests.
    assert client.get("/v1/variants").json()["total"] == 0


def test_unknown_backbone_names_the_known_ones(client: TestClient, problem: Any) -> None:
    body = problem(client.post("/v1/variants",
                               json={"name": "v", "settings": {"backbone": "resnet9000"}}), 422)
    assert "efficientnet_lite0" in body["detail"]


def test_backbones_list_registry_with_figures(client: TestClient) -> None:
    response = client.get("/v1/backbones")
    assert response.status_code == 200
    backbones = {b["name"]: b for b in response.json()}
    lite = backbones["efficientnet_lite2"]
    assert lite["is_default"] is True
    assert [b["name"] for b in backbones.values() if b["is_default"]] == ["efficientnet_lite2"]
    assert lite["available"] is True
    assert lite["feature_dim"] > 0 and lite["default_resolution"] > 0
    assert isinstance(lite["figures"], dict)
    assert lite["license"] and lite["source"]


def test_malformed_json_is_422_problem(client: TestClient, problem: Any) -> None:
    response = client.post("/v1/variants", content=b"{not json",
                           headers={"content-type": "application/json"})
    problem(response, 422)
