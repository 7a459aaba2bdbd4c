"""Inspection records through the API: written with every verdict, read back with filters and
a cursor, exported, kept images within the policy, feedback and promotion."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.services import records as records_service

PNG = {"content-type": "image/png"}


def _inspect(client: TestClient, data: bytes, **params: Any) -> dict[str, Any]:
    response = client.post("/v1/variants/bolt/inspect", content=data, headers=PNG,
                           params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _policy(client: TestClient, **policy: Any) -> None:
    response = client.patch("/v1/variants/bolt", json={"records": policy})
    assert response.status_code == 200, response.text


def test_every_verdict_is_recorded_with_what_the_caller_said(trained: Any, images: Any,
                                                             client: TestClient) -> None:
    verdict = _inspect(client, images.defect_png(1), part_id="SN-1", station="line-3",
                       lot="L-7", tag=["night", "retry"])
    record = client.get(f"/v1/records/{verdict['record_id']}").json()
    for key in ("score", "normalized_score", "threshold", "is_anomalous", "model_version",
                "latency_ms", "width", "height"):
        assert record[key] == verdict[key], key
    assert record["variant"] == "bolt" and record["regions"] == verdict["regions"]
    assert record["regions_of_interest"] == verdict["regions_of_interest"]
    assert (record["part_id"], record["station"], record["lot"], record["tags"]) == \
        ("SN-1", "line-3", "L-7", ["night", "retry"])
    assert record["request_id"] and record["feedback"] is None
    assert record["image_kept"]  # anomalous: kept
    files = [("files", (f"{i}.png", images.good_png(40 + i), "image/png")) for i in range(2)]
    batch = client.post("/v1/variants/bolt/inspect/batch", files=files,
                        params={"station": "line-4"}).json()
    ids = [r["record_id"] for r in batch]
    assert ids == sorted(ids) and ids[0] > verdict["record_id"]
    assert {client.get(f"/v1/records/{i}").json()["station"] for i in ids} == {"line-4"}


def test_the_kept_image_its_heatmap_and_a_record_without_one(trained: Any, images: Any,
                                                             client: TestClient,
                                                             problem: Any) -> None:
    _policy(client, keep_good_fraction=0.0)
    data = images.defect_png(2)
    kept = _inspect(client, data)["record_id"]
    image = client.get(f"/v1/records/{kept}/image")
    assert image.status_code == 200 and image.content == data  # exactly as sent
    heatmap = client.get(f"/v1/records/{kept}/heatmap")
    assert heatmap.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(heatmap.content)).size == (96, 96)
    good = _inspect(client, images.good_png(3))["record_id"]
    assert not client.get(f"/v1/records/{good}").json()["image_kept"]
    body = problem(client.get(f"/v1/records/{good}/image"), 409)
    assert "retention policy" in body["detail"]
    problem(client.get(f"/v1/records/{good}/heatmap"), 409)
    problem(client.get("/v1/records/999999"), 404)
    _policy(client, keep_good_fraction=1.0)
    assert client.get(f"/v1/records/{_inspect(client, images.good_png(4))['record_id']}"
                      ).json()["image_kept"]


def test_filters_and_the_cursor(trained: Any, images: Any, client: TestClient) -> None:
    ids = [_inspect(client, images.good_png(50 + i), station=f"s{i % 2}", part_id=f"p{i}")
           ["record_id"] for i in range(5)]
    bad = _inspect(client, images.defect_png(5), station="s0")["record_id"]
    page = client.get("/v1/records", params={"limit": 2}).json()
    assert [r["id"] for r in page["items"]] == [bad, ids[4]]
    seen = [r["id"] for r in page["items"]]
    while page["next_cursor"]:
        page = client.get("/v1/records", params={"limit": 2,
                                                 "cursor": page["next_cursor"]}).json()
        seen += [r["id"] for r in page["items"]]
    assert seen == [bad, *reversed(ids)]

    def listed(**params: Any) -> list[int]:
        response = client.get("/v1/records", params=params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["items"]]

    assert listed(station="s0") == [bad, ids[4], ids[2], ids[0]]
    assert listed(verdict="anomalous") == [bad]
    assert listed(verdict="good", station="s1") == [ids[3], ids[1]]
    assert listed(part_id="p3") == [ids[3]]
    assert listed(variant="bolt", model_version=1)[0] == bad
    assert listed(model_version=2) == []
    now = datetime.now(UTC)
    assert listed(since=(now - timedelta(minutes=5)).isoformat()) == [bad, *reversed(ids)]
    assert listed(until=(now - timedelta(minutes=5)).isoformat()) == []
    client.post(f"/v1/records/{ids[1]}/feedback", json={"label": "defect"})
    assert listed(feedback="any") == [ids[1]] and listed(feedback="defect") == [ids[1]]
    assert ids[1] not in listed(feedback="none")


@pytest.mark.parametrize("params", [
    {"part_id": "x" * 129}, {"station": "a\x01b"},
    {"tag": ["ok"] * 17}, {"tag": ["x" * 65]},
])
def test_bad_caller_metadata_is_422_and_nothing_is_recorded(trained: Any, images: Any,
                                                            client: TestClient, problem: Any,
                                                            params: dict[str, Any]) -> None:
    before = client.get("/v1/records").json()["items"]
    problem(client.post("/v1/variants/bolt/inspect", content=images.good_png(6), headers=PNG,
                        params=params), 422)
    assert client.get("/v1/records").json()["items"] == before


@pytest.mark.parametrize("params", [
    {"cursor": "abc"}, {"cursor": "\u00b2"}, {"cursor": "9999999999999999999"},
    {"since": "2026-12-01T08:00:00"}, {"since": "0001-01-01T00:00:00+01:00"},
    {"until": "9999-12-31T23:59:59-01:00"}, {"feedback": "maybe"}, {"verdict": "bad"},
    {"limit": 0},
])
def test_bad_filters_are_422(client: TestClient, problem: Any, params: dict[str, Any]) -> None:
    problem(client.get("/v1/records", params=params), 422)
    export = {k: v for k, v in params.items() if k not in ("cursor", "limit")}
    if export:  # refused before the stream starts, never a 200 with a cut-off body
        problem(client.get("/v1/records/export", params=export), 422)


def test_a_variant_filter_that_does_not_exist_is_404(client: TestClient, problem: Any) -> None:
    problem(client.get("/v1/records", params={"variant": "nope"}), 404)


def test_export_as_csv_and_json_lines(trained: Any, images: Any, client: TestClient,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records_service, "EXPORT_PAGE", 2)  # several pages, one stream
    ids = [_inspect(client, images.good_png(60 + i), tag=["a", "b"])["record_id"]
           for i in range(5)]
    response = client.get("/v1/records/export", params={"format": "jsonl"})
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [r["id"] for r in lines] == list(reversed(ids))
    assert lines[0] == client.get(f"/v1/records/{ids[-1]}").json()
    response = client.get("/v1/records/export", params={"format": "csv", "verdict": "good"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(r["id"]) for r in rows] == list(reversed(ids))
    assert json.loads(rows[0]["tags"]) == ["a", "b"] and json.loads(rows[0]["regions"]) == []
    assert rows[0]["variant"] == "bolt" and rows[0]["is_anomalous"] == "False"


def test_feedback_and_promotion(trained: Any, images: Any, client: TestClient,
                                problem: Any) -> None:
    _policy(client, keep_good_fraction=0.0)
    data = images.defect_png(7)
    record_id = _inspect(client, data)["record_id"]
    given = client.post(f"/v1/records/{record_id}/feedback",
                        json={"label": "good", "note": "oil drop, wiped"})
    assert given.status_code == 200, given.text
    assert given.json()["feedback"] == "good" and given.json()["feedback_note"] == \
        "oil drop, wiped"
    assert given.json()["feedback_by"] and given.json()["feedback_at"]
    problem(client.post(f"/v1/records/{record_id}/feedback", json={"label": "meh"}), 422)
    before = client.get("/v1/variants/bolt").json()["n_good_images"]
    promoted = client.post(f"/v1/records/{record_id}/promote", json={"label": "good"})
    assert promoted.status_code == 201, promoted.text
    assert promoted.json()["created"] and promoted.json()["label"] == "good"
    assert client.get("/v1/variants/bolt").json()["n_good_images"] == before + 1
    stored = client.get(f"/v1/variants/bolt/images/{promoted.json()['id']}/content").content
    assert stored == data
    again = client.post(f"/v1/records/{record_id}/promote", json={"label": "good"})
    assert again.status_code == 201 and not again.json()["created"]
    good = _inspect(client, images.good_png(8))["record_id"]
    problem(client.post(f"/v1/records/{good}/promote", json={"label": "good"}), 409)


def test_records_can_be_turned_off_and_go_with_their_variant(trained: Any, images: Any,
                                                             client: TestClient,
                                                             problem: Any) -> None:
    kept = _inspect(client, images.defect_png(9))["record_id"]
    _policy(client, enabled=False)
    assert client.get("/v1/variants/bolt").json()["records"]["enabled"] is False
    assert _inspect(client, images.defect_png(10))["record_id"] is None
    assert [r["id"] for r in client.get("/v1/records").json()["items"]] == [kept]
    assert client.delete("/v1/variants/bolt").status_code == 204
    problem(client.get(f"/v1/records/{kept}"), 404)
    assert client.get("/v1/records").json()["items"] == []


def test_the_byte_budget_removes_the_oldest_images_first(trained: Any, images: Any,
                                                         client: TestClient) -> None:
    size = len(images.defect_png(11))
    _policy(client, max_image_bytes=int(2.5 * size), keep_good_fraction=0.0)
    ids = [_inspect(client, images.defect_png(11 + i))["record_id"] for i in range(4)]
    kept = [client.get(f"/v1/records/{i}").json()["image_kept"] for i in ids]
    assert kept == [False, False, True, True]
    assert all(client.get(f"/v1/records/{i}").status_code == 200 for i in ids)  # records stay


def test_a_bad_policy_is_422(trained: Any, client: TestClient, problem: Any) -> None:
    for policy in ({"keep_good_fraction": 2}, {"max_image_age_days": 0}, {"colour": "red"}):
        problem(client.patch("/v1/variants/bolt", json={"records": policy}), 422)


def test_csv_cells_never_start_a_formula(trained: Any, images: Any, client: TestClient) -> None:
    _inspect(client, images.good_png(70), part_id="=HYPERLINK(\"x\")", station="+1",
             lot="-2", tag=["@now"])
    (row,) = list(csv.DictReader(io.StringIO(
        client.get("/v1/records/export", params={"format": "csv"}).text)))
    assert (row["part_id"], row["station"], row["lot"]) == \
        ("'=HYPERLINK(\"x\")", "'+1", "'-2")
    assert json.loads(row["tags"]) == ["@now"]  # inside JSON: not a cell of its own


def test_a_lower_budget_applies_at_once(trained: Any, images: Any, client: TestClient) -> None:
    _policy(client, keep_good_fraction=0.0)
    ids = [_inspect(client, images.defect_png(80 + i))["record_id"] for i in range(3)]
    size = len(images.defect_png(80))
    _policy(client, keep_good_fraction=0.0, max_image_bytes=int(1.5 * size))
    kept = [client.get(f"/v1/records/{i}").json()["image_kept"] for i in ids]
    assert kept == [False, False, True]
    assert client.get("/v1/variants/bolt").json()["records"]["max_image_bytes"] == \
        int(1.5 * size)


def test_record_ids_are_never_reused(api: Any, images: Any, client: TestClient) -> None:
    api.trained_variant("bolt")
    last = _inspect(client, images.good_png(90))["record_id"]
    assert client.delete("/v1/variants/bolt").status_code == 204
    api.trained_variant("bolt")
    assert _inspect(client, images.good_png(91))["record_id"] > last
