"""Images: multipart upload (good / defect), idempotent re-upload, listing, deletion."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi.testclient import TestClient


def test_upload_lists_and_deletes(api: Any, images: Any, client: TestClient) -> None:
    api.create_variant("bolt")
    data = [images.good_png(0), images.good_png(1)]
    response = api.upload("bolt", data)
    assert response.status_code == 201, response.text
    uploaded = response.json()["images"]
    assert [i["sha256"] for i in uploaded] == [hashlib.sha256(d).hexdigest() for d in data]
    assert all(i["label"] == "good" and i["width"] == 96 and i["height"] == 96
               for i in uploaded)
    assert all(i["created"] for i in uploaded)

    response = api.upload("bolt", [images.defect_png(5)], label="defect")
    assert response.status_code == 201
    assert response.json()["images"][0]["label"] == "defect"

    page = client.get("/v1/variants/bolt/images").json()
    assert page["total"] == 3 and len(page["items"]) == 3
    assert client.get("/v1/variants/bolt/images", params={"label": "defect"}).json()["total"] == 1
    page = client.get("/v1/variants/bolt/images", params={"limit": 1, "offset": 1}).json()
    assert [i["id"] for i in page["items"]] == [uploaded[1]["id"]]

    variant = client.get("/v1/variants/bolt").json()
    assert (variant["n_good_images"], variant["n_defect_images"]) == (2, 1)

    image_id = uploaded[0]["id"]
    content = client.get(f"/v1/variants/bolt/images/{image_id}/content")
    assert content.status_code == 200 and content.content == data[0]
    assert content.headers["content-type"] == "image/png"
    assert client.delete(f"/v1/variants/bolt/images/{image_id}").status_code == 204
    assert client.get(f"/v1/variants/bolt/images/{image_id}").status_code == 404
    assert client.delete(f"/v1/variants/bolt/images/{image_id}").status_code == 404
    assert client.get("/v1/variants/bolt/images").json()["total"] == 2


def test_reupload_is_idempotent(api: Any, images: Any, client: TestClient) -> None:
    api.create_variant("bolt")
    first = api.upload("bolt", [images.good_png(0)]).json()["images"][0]
    again = api.upload("bolt", [images.good_png(0), images.good_png(0)])
    assert again.status_code == 201
    second = again.json()["images"]
    assert [i["id"] for i in second] == [first["id"], first["id"]]
    assert not any(i["created"] for i in second)
    assert client.get("/v1/variants/bolt/images").json()["total"] == 1


def test_same_bytes_in_two_variants_are_two_images(api: Any, images: Any) -> None:
    api.create_variant("a")
    api.create_variant("b")
    one = api.upload("a", [images.good_png(0)]).json()["images"][0]
    two = api.upload("b", [images.good_png(0)]).json()["images"][0]
    assert one["id"] != two["id"] and two["created"]


def test_other_formats_are_accepted(api: Any, images: Any) -> None:
    api.create_variant("bolt")
    pixels = images.good_pixels(3)
    for fmt in ("JPEG", "BMP", "TIFF"):
        response = api.upload("bolt", [images.encode(pixels, fmt)])
        assert response.status_code == 201, (fmt, response.text)
        assert response.json()["images"][0]["format"] == fmt


def test_image_paths_are_validated(api: Any, client: TestClient, problem: Any) -> None:
    api.create_variant("bolt")
    problem(client.get("/v1/variants/bolt/images/0"), 422)
    problem(client.get("/v1/variants/bolt/images/abc"), 422)
    problem(client.delete("/v1/variants/bolt/images/-3"), 422)
    problem(client.get("/v1/variants/bolt/images/999"), 404)
    problem(client.get("/v1/variants/bolt/images", params={"label": "meh"}), 422)
