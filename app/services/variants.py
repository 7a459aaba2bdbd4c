"""Variants: create, list, read, change and delete, with their detector settings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import Image, ImageLabel, Model, Variant, utcnow
from app.detector.backbones import get_backbone
from app.detector.config import DetectorConfig
from app.detector.layout import Layout
from app.detector.presets import (
    AUTO,
    LEGACY_PRESET,
    PRESET_FIELDS,
    shown_preset,
)
from app.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from app.services.records import RecordPolicy, enforce_retention

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN)

# The detector settings a variant may set: every field of DetectorConfig, so a new detector
# setting is settable (and shown) without touching this layer.
SETTING_KEYS: tuple[str, ...] = tuple(DetectorConfig.__dataclass_fields__)


@dataclass(frozen=True)
class VariantSummary:
    """A variant row with the figures its public view shows (one query for a whole page)."""

    variant: Variant
    active_model_version: int | None
    n_good_images: int
    n_defect_images: int
    n_models: int


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidInputError(
            f"variant name {name!r} must match {NAME_PATTERN} (lowercase slug, at most 63 chars)"
        )
    return name


def resolve_settings(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The settings a variant stores, every one resolved: ``current`` (empty for a new variant)
    updated with ``changes``. A variant keeps every value it was created or changed with, so a
    later release's defaults never change the models it trains next. A ``preset`` in
    ``changes`` sets the settings presets set (backbone...) to that preset's values, except
    those ``changes`` gives too; ``InvalidInputError`` for anything training would refuse."""
    unknown = set(changes) - set(SETTING_KEYS)
    if unknown:
        raise InvalidInputError(f"unknown settings {sorted(unknown)}; known: {list(SETTING_KEYS)}")
    chooses = changes.get("preset", current.get("preset")) == AUTO
    if chooses and PRESET_FIELDS & set(changes):
        raise InvalidInputError(
            f"with preset auto, training chooses {sorted(PRESET_FIELDS)}: send another preset "
            "to set them yourself")
    if not current:
        return resolve_config(changes).to_dict()
    stored = effective_settings(current)
    if "preset" in changes:
        chosen = resolve_config({"preset": changes["preset"]}).to_dict()
        stored.update({k: chosen[k] for k in PRESET_FIELDS})
    return resolve_config({**stored, **changes}).to_dict()


def resolve_config(settings: dict[str, Any]) -> DetectorConfig:
    """The detector configuration of ``settings``: its preset's values under its own;
    ``InvalidInputError`` for an unknown backbone or a bad value."""
    config = DetectorConfig.from_dict({k: v for k, v in settings.items() if k in SETTING_KEYS})
    get_backbone(config.backbone)  # unknown backbone -> InvalidInputError naming the known ones
    return config


def effective_settings(stored: dict[str, Any]) -> dict[str, Any]:
    """Every setting of a stored variant: what it holds, and for the settings added since it
    was stored its preset's or the detector's defaults. Read without checks, so a variant stays
    readable when a later release refuses one of its values (training then says why)."""
    name = stored.get("preset", LEGACY_PRESET)
    preset = shown_preset(name)
    return {**DetectorConfig().to_dict(), "preset": name,
            **(preset.settings if preset else {}),
            **{k: v for k, v in stored.items() if k in SETTING_KEYS}}


def overridden(stored: dict[str, Any]) -> list[str]:
    """The settings whose value differs from what the variant's preset gives, in field order."""
    resolved = effective_settings(stored)
    preset = effective_settings({"preset": resolved["preset"]})
    return [k for k in SETTING_KEYS if k != "preset" and resolved[k] != preset[k]]


def create_variant(session: Session, *, name: str, description: str = "",
                   settings: dict[str, Any] | None = None,
                   layout: Layout | None = None,
                   records: dict[str, Any] | None = None) -> Variant:
    """Create a variant; a taken name is ``AlreadyExistsError``. ``records``: its record
    policy (``records.RecordPolicy`` fields, validated where they enter)."""
    check_name(name)
    variant = Variant(name=name, description=description,
                      settings=resolve_settings({}, settings or {}),
                      layout=None if layout is None or layout.is_empty else layout.to_dict(),
                      records=records or None)
    session.add(variant)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise AlreadyExistsError(f"variant {name!r} already exists") from None
    return variant


def get_variant(session: Session, *, name: str) -> Variant:
    """The variant called ``name`` or ``NotFoundError``."""
    variant = session.scalar(select(Variant).where(Variant.name == name))
    if variant is None:
        raise NotFoundError(f"variant {name!r} not found")
    return variant


def summarize(session: Session, variants: list[Variant]) -> list[VariantSummary]:
    """Image counts and active versions for ``variants`` in two grouped queries."""
    ids = [v.id for v in variants]
    if not ids:
        return []
    counts: dict[tuple[int, str], int] = {
        (vid, label): n
        for vid, label, n in session.execute(
            select(Image.variant_id, Image.label, func.count())
            .where(Image.variant_id.in_(ids)).group_by(Image.variant_id, Image.label)
        )
    }
    models: dict[int, int] = dict(
        session.execute(  # type: ignore[arg-type]
            select(Model.variant_id, func.count()).where(Model.variant_id.in_(ids))
            .group_by(Model.variant_id)
        ).all()
    )
    active_ids = [v.active_model_id for v in variants if v.active_model_id is not None]
    versions: dict[int, int] = dict(
        session.execute(select(Model.id, Model.version).where(Model.id.in_(active_ids))).all()  # type: ignore[arg-type]
    ) if active_ids else {}
    return [
        VariantSummary(
            variant=v,
            active_model_version=versions.get(v.active_model_id) if v.active_model_id else None,
            n_good_images=counts.get((v.id, ImageLabel.good.value), 0),
            n_defect_images=counts.get((v.id, ImageLabel.defect.value), 0),
            n_models=models.get(v.id, 0),
        )
        for v in variants
    ]


def list_variants(session: Session, *, limit: int, offset: int) -> tuple[list[Variant], int]:
    """A page of variants by name, and the total count."""
    total = session.scalar(select(func.count()).select_from(Variant)) or 0
    rows = session.scalars(select(Variant).order_by(Variant.name).limit(limit).offset(offset))
    return list(rows), total


def update_variant(session: Session, *, variant: Variant, description: str | None = None,
                   settings: dict[str, Any] | None = None,
                   records: dict[str, Any] | None = None, commit: bool = True) -> Variant:
    """Change the description, merge ``settings`` (affects models trained afterwards) and/or
    replace the record policy. ``commit`` False leaves the transaction open for a change that
    goes with it (a layout: ``training.change_layout``)."""
    if description is not None:
        variant.description = description
    if settings is not None:
        variant.settings = resolve_settings(variant.settings, settings)
    if records is not None:  # applies to the images already kept too
        variant.records = records
        enforce_retention(session, variant_id=variant.id, policy=RecordPolicy.of(records))
    variant.updated_at = utcnow()
    if commit:
        session.commit()
    return variant


def delete_variant(session: Session, *, variant: Variant) -> None:
    """Delete a variant with its images, models and artefacts (database cascades)."""
    # Break the variant <-> model cycle first, then let ON DELETE CASCADE do the rest.
    session.execute(update(Variant).where(Variant.id == variant.id).values(active_model_id=None))
    session.execute(delete(Variant).where(Variant.id == variant.id))
    session.commit()
    session.expunge(variant)
