"""A restart (a new app on the same database) keeps variants, images and models; a second
replica on the same database sees activations at once."""

from __future__ import annotations

from typing import Any


def test_restart_keeps_everything(make_client: Any, api_class: Any, images: Any) -> None:
    first = make_client()
    api = api_class(first)
    api.trained_variant("bolt")
    api.upload("bolt", [images.defect_png(9)], label="defect")
    probe = {"content": images.defect_png(5), "headers": {"content-type": "image/png"}}
    verdict = first.post("/v1/variants/bolt/inspect", **probe).json()
    onnx = first.get("/v1/variants/bolt/models/1/onnx").content
    variant = first.get("/v1/variants/bolt").json()
    image_list = first.get("/v1/variants/bolt/images").json()
    first.__exit__(None, None, None)  # shut the first instance down (lifespan exit)

    second = make_client()
    assert second.get("/v1/variants/bolt").json() == variant
    assert second.get("/v1/variants/bolt/images").json() == image_list
    model = second.get("/v1/variants/bolt/models/1").json()
    assert model["status"] == "ready" and model["is_active"]
    assert second.get("/v1/variants/bolt/models/1/onnx").content == onnx
    again = second.post("/v1/variants/bolt/inspect", **probe).json()
    assert again["score"] == verdict["score"] and again["model_version"] == 1
    # And it can keep working: train v2 from the stored images.
    assert api_class(second).train("bolt", seed=1)["status"] == "ready"


def test_activation_on_one_replica_is_seen_by_another(make_client: Any, api_class: Any,
                                                      images: Any) -> None:
    one, two = make_client(), make_client(training_workers=0)
    api = api_class(one)
    api.trained_variant("bolt")
    assert api.train("bolt", seed=5, activate=False)["status"] == "ready"
    probe = {"content": images.good_png(3), "headers": {"content-type": "image/png"}}
    assert two.post("/v1/variants/bolt/inspect", **probe).json()["model_version"] == 1
    assert one.post("/v1/variants/bolt/models/2/activate").status_code == 200
    assert two.post("/v1/variants/bolt/inspect", **probe).json()["model_version"] == 2
    # A job queued through the serve-only replica is trained by the other one.
    response = two.post("/v1/variants/bolt/models", json={"seed": 9})
    assert response.status_code == 202
    assert api_class(two).wait_for_model("bolt", response.json()["version"])["status"] == "ready"
