"""The engine end to end on small generated images: fit, the shipped ONNX file, validation."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.detector.backbones import get_backbone
from app.detector.config import DetectorConfig
from app.detector.engine import (
    Detector,
    FittedModel,
    augment,
    bank_from_model,
    bank_size,
    plan_from_model,
)
from app.detector.graph import ResizePlan
from app.errors import InvalidInputError, TrainingCancelledError

# Small banks that really go through the coreset (the default keeps every patch below 2048).
CORESET_CONFIG = DetectorConfig(resolution=64, min_bank_size=1, coreset_ratio=0.25)


def _plain_session(onnx_bytes: bytes) -> ort.InferenceSession:
    """What an integrator does: onnxruntime alone, no project code."""
    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def _onnx_score(session: ort.InferenceSession, image: np.ndarray) -> float:
    score, _ = session.run(["score", "anomaly_map"], {"image": image})
    return float(score[0])


# --- the shipped ONNX file ---------------------------------------------------------------


def test_onnx_file_runs_alone_on_another_size(
    fitted: FittedModel,
    detector: Detector,
    config: DetectorConfig,
    good_image: Callable[..., np.ndarray],
) -> None:
    session = _plain_session(fitted.onnx_bytes)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].type == "tensor(uint8)"
    image = good_image(21, 72, 136)  # training images are 96 x 96
    score, anomaly_map = session.run(["score", "anomaly_map"], {"image": image})
    assert score.shape == (1,) and score.dtype == np.float32
    assert anomaly_map.shape == (72, 136) and anomaly_map.dtype == np.float32
    assert np.isfinite(anomaly_map).all()
    # The map interpolates and blurs patch scores: it never exceeds the max patch score.
    assert anomaly_map.min() >= 0.0
    assert anomaly_map.max() <= score[0] * (1 + 1e-5)

    engine = detector.patch_scores(
        image, bank_from_model(fitted.onnx_bytes), config, plan_from_model(fitted.onnx_bytes)
    )
    assert engine.patches.shape == (engine.grid[0] * engine.grid[1],)
    engine_score = float(engine.patches.max())
    assert abs(score[0] - engine_score) / engine_score < 1e-4


def test_onnx_file_carries_its_metadata(fitted: FittedModel, config: DetectorConfig) -> None:
    props = _plain_session(fitted.onnx_bytes).get_modelmeta().custom_metadata_map
    assert float(props["nominal.threshold"]) == fitted.threshold
    assert props["nominal.backbone"] == config.backbone
    assert props["nominal.format_version"] == "2"
    preprocessing = json.loads(props["nominal.preprocessing"])
    assert {"input", "resize", "normalise", "outputs", "decision"} <= set(preprocessing)
    assert "patch_scores" in preprocessing["outputs"]
    regions = json.loads(props["nominal.regions"])
    assert regions["min_defect_area_px"] == config.min_defect_area_px
    assert "8-connected" in regions["rule"]
    # The configuration used: augment auto recorded as what it chose (these parts lie one way).
    assert DetectorConfig.from_dict(json.loads(props["nominal.config"])) == fitted.config
    assert fitted.config == replace(config, augment="none" if config.augment == "auto"
                                    else config.augment)
    assert int(props["nominal.bank_size"]) == fitted.bank_size
    assert bank_from_model(fitted.onnx_bytes).shape == (
        fitted.bank_size, get_backbone(config.backbone).feature_dim)


def test_extra_metadata_is_stored(
    detector: Detector, config: DetectorConfig, train_images: list[np.ndarray]
) -> None:
    model = detector.fit(train_images[:2], config, metadata={"nominal.variant": "bottle"})
    props = _plain_session(model.onnx_bytes).get_modelmeta().custom_metadata_map
    assert props["nominal.variant"] == "bottle"


def test_defect_scores_above_threshold_and_every_good_image(
    fitted: FittedModel,
    good_image: Callable[..., np.ndarray],
    defect_image: Callable[..., Any],
) -> None:
    session = _plain_session(fitted.onnx_bytes)
    good = [_onnx_score(session, good_image(seed)) for seed in range(10, 15)]
    defect = _onnx_score(session, defect_image(20).image)
    assert defect > fitted.threshold
    assert defect > max(good)
    assert max(good) <= fitted.threshold  # new good parts are accepted (measured ~2.5 vs ~4.5)
    # The calibration images themselves are accepted.
    assert fitted.calibration.good_scores and max(fitted.calibration.good_scores) <= (
        fitted.threshold
    )


@pytest.fixture(scope="module")
def fitted_96(detector: Detector, train_images: list[np.ndarray]) -> FittedModel:
    """Resolution 96 on 96 x 96 images: a 12 x 12 grid. At 8 x 8 the corner patches (fewest
    look-alikes in the bank) can outscore an off-centre blob, so localisation is tested here."""
    return detector.fit(train_images, DetectorConfig(resolution=96), seed=0)


@pytest.mark.parametrize("centre", [(48, 48), (30, 66), (66, 30), (28, 28)])
def test_anomaly_map_peaks_on_the_blob(
    fitted_96: FittedModel, defect_image: Callable[..., Any], centre: tuple[int, int]
) -> None:
    defect = defect_image(20, centre=centre, radius=6)
    score, anomaly_map = _plain_session(fitted_96.onnx_bytes).run(
        ["score", "anomaly_map"], {"image": defect.image}
    )
    assert score[0] > fitted_96.threshold
    row, col = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
    margin = 8  # one patch
    assert np.hypot(row - centre[0], col - centre[1]) <= defect.radius + margin


# --- fit ---------------------------------------------------------------------------------


def test_fit_is_deterministic_for_a_seed(
    detector: Detector, train_images: list[np.ndarray]
) -> None:
    a = detector.fit(train_images, CORESET_CONFIG, seed=3)
    b = detector.fit(train_images, CORESET_CONFIG, seed=3)
    c = detector.fit(train_images, CORESET_CONFIG, seed=4)
    bank_a = bank_from_model(a.onnx_bytes)
    assert a.bank_size < 3 * 64  # the coreset really subsampled
    np.testing.assert_array_equal(bank_a, bank_from_model(b.onnx_bytes))
    assert a.threshold == b.threshold
    assert not np.array_equal(bank_a, bank_from_model(c.onnx_bytes))


def test_fit_accepts_images_of_different_sizes(
    detector: Detector, config: DetectorConfig, good_image: Callable[..., np.ndarray]
) -> None:
    images = [good_image(0, 96, 96), good_image(1, 80, 120), good_image(2, 112, 96)]
    model = detector.fit(images, config)
    assert model.n_images == 3
    assert plan_from_model(model.onnx_bytes).reference_side == 96.0


def test_one_image_uses_region_holdout(
    detector: Detector, config: DetectorConfig, train_images: list[np.ndarray]
) -> None:
    model = detector.fit(train_images[:1], config)
    assert model.calibration.method == "region-holdout"
    assert model.threshold > 0
    assert model.calibration.good_scores[0] <= model.threshold


def test_defect_images_refine_the_threshold(
    detector: Detector,
    config: DetectorConfig,
    train_images: list[np.ndarray],
    defect_image: Callable[..., Any],
) -> None:
    model = detector.fit(train_images, config, defect_images=[defect_image(30).image])
    cal = model.calibration
    assert cal.method == "f1-with-defects"
    assert len(cal.defect_scores) == 1
    assert max(cal.good_scores) <= model.threshold < cal.defect_scores[0]


def test_empty_image_list_is_refused(detector: Detector, config: DetectorConfig) -> None:
    with pytest.raises(InvalidInputError, match="at least one"):
        detector.fit([], config)


_BAD_IMAGES = {
    "float32": np.zeros((64, 64, 3), dtype=np.float32),
    "uint16": np.zeros((64, 64, 3), dtype=np.uint16),
    "gray-2d": np.zeros((64, 64), dtype=np.uint8),
    "rgba": np.zeros((64, 64, 4), dtype=np.uint8),
    "tiny": np.zeros((4, 64, 3), dtype=np.uint8),
    "batched": np.zeros((1, 64, 64, 3), dtype=np.uint8),
    "list": [[[0, 0, 0]] * 64] * 64,
}


@pytest.mark.parametrize("name", sorted(_BAD_IMAGES))
def test_bad_arrays_are_refused(
    detector: Detector,
    config: DetectorConfig,
    train_images: list[np.ndarray],
    fitted: FittedModel,
    name: str,
) -> None:
    bad = _BAD_IMAGES[name]
    with pytest.raises(InvalidInputError):
        detector.fit([train_images[0], bad], config)  # type: ignore[list-item]
    with pytest.raises(InvalidInputError):
        detector.fit(train_images, config, defect_images=[bad])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError):
        detector.patch_scores(
            bad,
            bank_from_model(fitted.onnx_bytes),
            config,  # type: ignore[arg-type]
            plan_from_model(fitted.onnx_bytes),
        )


def test_rot90_views_are_the_eight_symmetries_of_a_square() -> None:
    image = np.random.default_rng(0).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    expected = {
        np.rot90(base, k).tobytes() for base in (image, image[:, ::-1]) for k in range(4)
    }
    views = augment(image, "rot90")
    assert len(views) == 8
    assert {v.tobytes() for v in views} == expected
    assert all(v.flags.c_contiguous for v in views)


@pytest.mark.parametrize(("mode", "views"), [("none", 1), ("flip", 3), ("rot90", 8)])
def test_augmentation_grows_the_bank(
    detector: Detector, train_images: list[np.ndarray], mode: str, views: int
) -> None:
    # Square images: every view has the same 8 x 8 grid; below 2048 patches all are kept.
    model = detector.fit(train_images, DetectorConfig(resolution=64, augment=mode,
                                                      jpeg_views=0))
    assert model.bank_size == views * len(train_images) * 64


def test_fit_bank_size_follows_the_config(
    detector: Detector, train_images: list[np.ndarray]
) -> None:
    model = detector.fit(
        train_images, DetectorConfig(resolution=64, min_bank_size=1, coreset_ratio=0.1,
                                     jpeg_views=0)
    )
    assert model.bank_size == 20  # ceil(0.1 * 192)
    assert bank_from_model(model.onnx_bytes).shape == (
        20, get_backbone(model.config.backbone).feature_dim)
    capped = detector.fit(
        train_images, DetectorConfig(resolution=64, min_bank_size=1, max_bank_size=7)
    )
    assert capped.bank_size == 7


@pytest.mark.parametrize(
    ("n", "settings", "expected"),
    [
        (192, {}, 192),  # below min_bank_size: everything
        (20_000, {}, 2048),  # ratio 2000 < min 2048
        (60_000, {}, 6_000),  # ratio
        (1_000_000, {}, DetectorConfig().max_bank_size),  # capped
        (192, {"min_bank_size": 1}, 20),  # ceil(19.2)
        (192, {"min_bank_size": 1, "coreset_ratio": 1.0}, 192),
        (10, {"min_bank_size": 1, "coreset_ratio": 0.01}, 1),  # never zero
        (50_000, {"min_bank_size": 100, "max_bank_size": 100}, 100),
    ],
)
def test_bank_size(n: int, settings: dict[str, Any], expected: int) -> None:
    assert bank_size(n, DetectorConfig(**settings)) == expected


def test_progress_rises_to_one(detector: Detector, train_images: list[np.ndarray]) -> None:
    calls: list[tuple[float, str]] = []
    detector.fit(train_images, CORESET_CONFIG, progress=lambda f, s: calls.append((f, s)))
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0
    assert calls[-1] == (1.0, "done")
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert all(a <= b for a, b in zip(fractions, fractions[1:], strict=False))
    assert len(set(fractions)) > 5
    assert {"features", "coreset", "calibration", "export"} <= {s for _, s in calls}


@pytest.mark.parametrize("stage", ["features", "coreset", "calibration", "export"])
def test_cancelling_from_progress_aborts_fit(
    detector: Detector, train_images: list[np.ndarray], stage: str
) -> None:
    seen: list[str] = []

    def progress(fraction: float, current: str) -> None:
        seen.append(current)
        if current == stage and fraction > 0:
            raise TrainingCancelledError(f"cancelled during {stage}")

    with pytest.raises(TrainingCancelledError, match=stage):
        detector.fit(train_images, CORESET_CONFIG, progress=progress)
    assert "done" not in seen


def test_a_one_row_bank_does_not_crash(detector: Detector, train_images: list[np.ndarray]) -> None:
    config = DetectorConfig(resolution=64, min_bank_size=1, max_bank_size=1)
    try:
        model = detector.fit(train_images, config)
    except InvalidInputError:
        return  # refusing the setting clearly is fine too
    assert model.bank_size == 1
    assert np.isfinite(model.threshold)


# --- DetectorConfig ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "shown"),
    [
        ({"resolution": 10}, "10"),
        ({"resolution": 2048}, "2048"),
        ({"coreset_ratio": 0}, "got 0"),
        ({"coreset_ratio": 1.5}, "1.5"),
        ({"augment": "spin"}, "spin"),
        ({"resize": "zoom"}, "zoom"),
        ({"max_aspect": 0.5}, "0.5"),
        ({"min_bank_size": 10, "max_bank_size": 5}, "10, 5"),
        ({"target_false_reject_rate": 0.7}, "0.7"),
        ({"blur_sigma": -1.0}, "-1.0"),
    ],
)
def test_config_rejects_bad_values_naming_them(settings: dict[str, Any], shown: str) -> None:
    with pytest.raises(InvalidInputError, match=shown):
        DetectorConfig(**settings)


def test_config_from_dict() -> None:
    config = DetectorConfig(resolution=128, augment="flip", coreset_ratio=0.2)
    assert DetectorConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InvalidInputError, match="colour_space"):
        DetectorConfig.from_dict({"resolution": 128, "colour_space": "hsv"})
    with pytest.raises(InvalidInputError, match="10"):
        DetectorConfig.from_dict({"resolution": 10})


# --- cosine distance -----------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "vit_small_l6_l9"])
def test_cosine_distance_compares_unit_length_features_in_the_file_and_the_engine(
    detector: Detector, train_images: list[np.ndarray],
    good_image: Callable[..., np.ndarray], defect_image: Callable[..., Any], backbone: str,
) -> None:
    config = DetectorConfig(backbone=backbone, resolution=70 if "vit" in backbone else 64,
                            distance="cosine")
    fitted = detector.fit(train_images, config, seed=0)
    bank = bank_from_model(fitted.onnx_bytes)
    assert np.allclose(np.linalg.norm(bank, axis=1), 1.0, atol=1e-5)
    session = _plain_session(fitted.onnx_bytes)
    stored = json.loads(session.get_modelmeta().custom_metadata_map["nominal.config"])
    assert stored["distance"] == "cosine"
    image = good_image(31)
    engine = detector.patch_scores(image, bank, config, plan_from_model(fitted.onnx_bytes))
    assert abs(_onnx_score(session, image) - float(engine.patches.max())) < 1e-4
    assert float(engine.patches.max()) <= 2.0  # between unit vectors
    good = max(_onnx_score(session, good_image(seed)) for seed in range(10, 14))
    assert _onnx_score(session, defect_image(20).image) > good

    euclidean = detector.fit(train_images, replace(config, distance="euclidean"), seed=0)
    assert not np.allclose(np.linalg.norm(bank_from_model(euclidean.onnx_bytes), axis=1), 1.0)


# --- background left out -------------------------------------------------------------------


def _part_on_background(seed: int, size: int = 96) -> np.ndarray:
    """A textured disc (the part) on a flat dark background."""
    from tests.detector.conftest import make_good

    image = np.full((size, size, 3), 30, np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size * 0.3) ** 2
    image[disc] = make_good(seed, size, size)[disc]
    return image


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "vit_small_l6_l9"])
def test_background_auto_judges_the_part_alone_in_the_file_and_the_engine(
    detector: Detector, backbone: str,
) -> None:
    config = DetectorConfig(backbone=backbone, resolution=196 if "vit" in backbone else 96,
                            background="auto")
    fitted = detector.fit([_part_on_background(s) for s in range(3)], config, seed=0)
    preprocessing = json.loads(dict((p.key, p.value) for p in onnx.load_from_string(
        fitted.onnx_bytes).metadata_props)["nominal.preprocessing"])
    assert preprocessing["background"].startswith("cells off the image's own foreground")

    session = _plain_session(fitted.onnx_bytes)
    bank, plan = bank_from_model(fitted.onnx_bytes), plan_from_model(fitted.onnx_bytes)
    good = _part_on_background(7)
    engine = detector.patch_scores(good, bank, config, plan, mask_background=True)
    assert abs(_onnx_score(session, good) - float(engine.patches.max())) < 1e-4
    assert engine.foreground is not None and 0 < engine.foreground.mean() < 1
    # Cells off the foreground are not judged; a mark on the part is caught.
    assert (engine.patches[engine.foreground == 0] == 0).all()
    assert engine.foreground[0] == 0  # a corner of the frame is background
    on_part = good.copy()
    on_part[44:54, 44:54] = 250
    assert _onnx_score(session, on_part) > fitted.threshold


def test_background_auto_keeps_a_texture_whole(
    detector: Detector, train_images: list[np.ndarray],
) -> None:
    """A texture has no background: auto decides to judge every cell, as keep does."""
    auto = detector.fit(train_images, DetectorConfig(resolution=64, background="auto"), seed=0)
    keep = detector.fit(train_images, DetectorConfig(resolution=64), seed=0)
    preprocessing = json.loads(dict((p.key, p.value) for p in onnx.load_from_string(
        auto.onnx_bytes).metadata_props)["nominal.preprocessing"])
    assert preprocessing["background"] == "every cell judged"
    assert auto.threshold == keep.threshold


# --- light normalised ----------------------------------------------------------------------


def _lit_model(detector: Detector, train_images: list[np.ndarray], image: np.ndarray,
               config: DetectorConfig) -> tuple[FittedModel, ResizePlan, str, ort.InferenceSession]:
    """A model fitted with ``config``'s light, its plan, the light its file describes and a
    plain session, the file's score of ``image`` checked against the engine's."""
    fitted = detector.fit(train_images, config, seed=0)
    plan = plan_from_model(fitted.onnx_bytes)
    props = dict((p.key, p.value) for p in onnx.load_from_string(
        fitted.onnx_bytes).metadata_props)
    session = _plain_session(fitted.onnx_bytes)
    engine = detector.patch_scores(image, bank_from_model(fitted.onnx_bytes), config, plan)
    assert abs(_onnx_score(session, image) - float(engine.patches.max())) < 1e-4
    return fitted, plan, json.loads(props["nominal.preprocessing"])["light"], session


def test_light_contrast_is_in_the_file_and_the_engine(
    detector: Detector, train_images: list[np.ndarray], good_image: Callable[..., np.ndarray],
) -> None:
    image = good_image(31)
    fitted, plan, light, session = _lit_model(
        detector, train_images, image, DetectorConfig(resolution=64, light="contrast"))
    assert plan.light_mean is None and plan.light_std is not None
    assert light.startswith("contrast moved by one gain about the image's own mean level")
    mean = image.mean()
    flatter = np.round(0.8 * (image.astype(np.float64) - mean) + mean).astype(np.uint8)
    assert abs(_onnx_score(session, flatter) - _onnx_score(session, image)) < \
        0.02 * fitted.threshold


def test_light_normalise_is_in_the_file_and_the_engine(
    detector: Detector, train_images: list[np.ndarray], good_image: Callable[..., np.ndarray],
) -> None:
    image = good_image(31)
    config = DetectorConfig(resolution=64, light="normalise")
    fitted, plan, light, session = _lit_model(detector, train_images, image, config)
    assert plan.light_mean is not None and plan.light_std is not None
    assert light.startswith(f"levels moved by one gain and offset to mean {plan.light_mean:.2f}")
    # A good part under a 20 % dimmer light scores as under the training light; as
    # photographed, the same dimming moves it.
    dim = np.round(image * 0.8).astype(np.uint8)
    assert abs(_onnx_score(session, dim) - _onnx_score(session, image)) < \
        0.02 * fitted.threshold
    kept = detector.fit(train_images, replace(config, light="keep"), seed=0)
    kept_session = _plain_session(kept.onnx_bytes)
    assert abs(_onnx_score(kept_session, dim) - _onnx_score(kept_session, image)) > \
        0.05 * kept.threshold
