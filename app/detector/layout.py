"""Where a model looks: regions of interest, each judged on its own, and ignore masks.

Rectangles in relative coordinates of the image frame (0..1, x to the right and y down from
the top-left corner), so a layout survives another camera resolution. A patch-grid cell
belongs to a rectangle when its centre lies inside it (``[x, x + width) x [y, y + height)``).

- Ignore masks remove their cells from every score, and their patches from the memory bank at
  training (a printed lot number that changes from part to part).
- With regions of interest, only their cells are judged: each region gets its own score and
  verdict, and the image is anomalous when one of them is.

Both are baked into the model's ONNX file (``graph.build_scoring_model``: the patch scores are
masked in the graph), so the downloaded file scores as the API does; ``with_layout`` gives an
existing file another layout without touching its memory bank or threshold.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from app.errors import InvalidInputError

MAX_REGIONS_OF_INTEREST = 32
MAX_IGNORE_MASKS = 32
MAX_MIN_DEFECT_AREA_PX = 100_000_000  # as the detector setting's bound
COVERAGE_GRID = 512  # cells per side where ``ignores_all_of`` compares masks
ROI_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$"
_ROI_NAME = re.compile(ROI_NAME_PATTERN)
# Names of the graph's layout constants (``(K, 4)`` float32 ``[x0, y0, x1, y1]``): fixed, so
# that ``with_layout`` can swap them.
ROIS_TENSOR = "layout_regions_of_interest"
IGNORE_TENSOR = "layout_ignore"
# What the graph holds when the layout has none: the whole frame judged, nothing ignored.
LAYOUT_METADATA = "nominal.layout"
# The ignore masks the memory bank was fitted without (``Detector.fit``): kept by ``with_layout``.
TRAINED_IGNORE_METADATA = "nominal.trained_ignore"
_WHOLE_FRAME = np.asarray([[0.0, 0.0, 1.0, 1.0]], np.float32)
_NOTHING = np.asarray([[0.0, 0.0, 0.0, 0.0]], np.float32)


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


@dataclass(frozen=True)
class Rect:
    """A rectangle of the frame in relative coordinates."""

    x: float
    y: float
    width: float
    height: float

    def check(self, what: str) -> None:
        values = (self.x, self.y, self.width, self.height)
        if not all(_finite(v) for v in values):
            raise InvalidInputError(f"{what}: x, y, width and height must be finite numbers")
        if self.width <= 0 or self.height <= 0:
            raise InvalidInputError(f"{what}: width and height must be greater than 0 (an empty "
                                    "rectangle covers nothing)")
        if self.x < 0 or self.y < 0 or self.x + self.width > 1 + 1e-9 or \
                self.y + self.height > 1 + 1e-9:
            raise InvalidInputError(
                f"{what}: must lie inside the frame: 0 <= x, 0 <= y, x + width <= 1, y + height "
                f"<= 1 (relative coordinates), got x={self.x:g} y={self.y:g} "
                f"width={self.width:g} height={self.height:g}")

    @property
    def corners(self) -> tuple[float, float, float, float]:
        return self.x, self.y, self.x + self.width, self.y + self.height


@dataclass(frozen=True)
class RegionOfInterest:
    """A named inspection window; ``min_defect_area_px`` None: the model's."""

    name: str
    rect: Rect
    min_defect_area_px: int | None = None


@dataclass(frozen=True)
class Layout:
    regions_of_interest: tuple[RegionOfInterest, ...] = ()
    ignore: tuple[Rect, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.regions_of_interest) > MAX_REGIONS_OF_INTEREST:
            raise InvalidInputError(f"at most {MAX_REGIONS_OF_INTEREST} regions of interest, got "
                                    f"{len(self.regions_of_interest)}")
        if len(self.ignore) > MAX_IGNORE_MASKS:
            raise InvalidInputError(f"at most {MAX_IGNORE_MASKS} ignore masks, got "
                                    f"{len(self.ignore)}")
        names = [roi.name for roi in self.regions_of_interest]
        for roi in self.regions_of_interest:
            if not isinstance(roi.name, str) or not _ROI_NAME.match(roi.name):
                raise InvalidInputError(f"region of interest name {roi.name!r} must match "
                                        f"{ROI_NAME_PATTERN}")
            roi.rect.check(f"region of interest {roi.name!r}")
            area = roi.min_defect_area_px
            if area is not None and (isinstance(area, bool) or not isinstance(area, int)
                                     or not 0 <= area <= MAX_MIN_DEFECT_AREA_PX):
                raise InvalidInputError(
                    f"region of interest {roi.name!r}: min_defect_area_px must be a whole "
                    f"number within 0..{MAX_MIN_DEFECT_AREA_PX}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidInputError(f"region of interest names must be unique, repeated: "
                                    f"{duplicates}")
        for i, rect in enumerate(self.ignore):
            rect.check(f"ignore mask {i}")

    @property
    def is_empty(self) -> bool:
        return not self.regions_of_interest and not self.ignore

    # ------------------------------------------------------------------ serialised forms

    def to_dict(self) -> dict[str, Any]:
        return {
            "regions_of_interest": [
                {"name": r.name, **asdict(r.rect),
                 **({"min_defect_area_px": r.min_defect_area_px}
                    if r.min_defect_area_px is not None else {})}
                for r in self.regions_of_interest
            ],
            "ignore": [asdict(rect) for rect in self.ignore],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Layout:
        """A layout from its JSON form; ``InvalidInputError`` naming what is wrong."""
        if not data:
            return cls()
        unknown = set(data) - {"regions_of_interest", "ignore"}
        if unknown:
            raise InvalidInputError(f"unknown layout fields {sorted(unknown)}; known: "
                                    "regions_of_interest, ignore")

        def rect(item: Mapping[str, Any], what: str, extra: set[str]) -> Rect:
            missing = {"x", "y", "width", "height"} - set(item)
            if missing:
                raise InvalidInputError(f"{what} needs {sorted(missing)}")
            unknown_keys = set(item) - {"x", "y", "width", "height"} - extra
            if unknown_keys:
                raise InvalidInputError(f"{what}: unknown fields {sorted(unknown_keys)}")
            return Rect(item["x"], item["y"], item["width"], item["height"])

        rois = tuple(
            RegionOfInterest(name=item.get("name", ""),
                             rect=rect(item, f"region of interest {item.get('name', i)!r}",
                                       {"name", "min_defect_area_px"}),
                             min_defect_area_px=item.get("min_defect_area_px"))
            for i, item in enumerate(data.get("regions_of_interest") or ())
        )
        ignore = tuple(rect(item, f"ignore mask {i}", set())
                       for i, item in enumerate(data.get("ignore") or ()))
        return cls(rois, ignore)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | None) -> Layout:
        return cls.from_dict(json.loads(text)) if text else cls()

    # ------------------------------------------------------------------ what the graph holds

    def roi_tensor(self) -> np.ndarray:
        """``(R, 4)`` ``[x0, y0, x1, y1]``: the regions of interest, or the whole frame."""
        if not self.regions_of_interest:
            return _WHOLE_FRAME.copy()
        return np.asarray([r.rect.corners for r in self.regions_of_interest], np.float32)

    def ignore_tensor(self) -> np.ndarray:
        """``(K, 4)`` ``[x0, y0, x1, y1]``: the ignore masks, or one that covers nothing."""
        if not self.ignore:
            return _NOTHING.copy()
        return np.asarray([rect.corners for rect in self.ignore], np.float32)

    # ------------------------------------------------------------------ on a patch grid

    def cell_masks(self, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(per region of interest (R, h, w), judged (h, w))`` float32 0/1 masks of a patch
        grid, as the graph computes them (``graph._layout_masks``): R = 1, the whole frame,
        without regions of interest."""
        rows, cols = grid
        ignored = inside(self.ignore_tensor(), rows, cols).max(axis=0)
        per_roi = inside(self.roi_tensor(), rows, cols) * (1.0 - ignored)[None]
        return per_roi.astype(np.float32), per_roi.max(axis=0).astype(np.float32)

    def ignored_cells(self, grid: tuple[int, int]) -> np.ndarray:
        """``(h, w)`` bool: the cells an ignore mask covers."""
        return inside(self.ignore_tensor(), *grid).max(axis=0) > 0

    def ignores_all_of(self, rects: tuple[Rect, ...]) -> bool:
        """Whether this layout's ignore masks cover every one of ``rects`` (checked on a fine
        grid of the frame): a model whose bank was fitted without those areas must never
        judge them."""
        if not rects:
            return True
        cells = (COVERAGE_GRID, COVERAGE_GRID)
        needed = Layout(ignore=rects).ignored_cells(cells)
        return bool(np.all(self.ignored_cells(cells)[needed]))


def inside(rects: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``(K, h, w)`` float32: 1 where a cell's centre lies in rectangle k."""
    centre_y = (np.arange(rows, dtype=np.float32) + 0.5) / rows
    centre_x = (np.arange(cols, dtype=np.float32) + 0.5) / cols
    r = np.asarray(rects, np.float32)
    in_rows = (centre_y[None] >= r[:, 1:2]) & (centre_y[None] < r[:, 3:4])
    in_cols = (centre_x[None] >= r[:, 0:1]) & (centre_x[None] < r[:, 2:3])
    return (in_rows[:, :, None] & in_cols[:, None, :]).astype(np.float32)
