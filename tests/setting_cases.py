"""Values just inside and just outside every declared detector setting, generated from the
declarations (``app.detector.config.SETTINGS``): a new setting's checks are tested by
declaring it, with nothing to add here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from app.detector.config import SETTINGS, DeclaredSetting


@dataclass(frozen=True)
class Case:
    name: str
    value: Any
    allowed: bool
    why: str

    @property
    def settings(self) -> dict[str, Any]:
        """The setting with its value, plus what keeps the one cross-field rule
        (min_bank_size <= max_bank_size) out of the way of a value that is allowed."""
        if self.allowed and self.name in ("min_bank_size", "max_bank_size"):
            return {"min_bank_size": self.value, "max_bank_size": self.value}
        return {self.name: self.value}

    def __str__(self) -> str:
        return f"{self.name}={self.value!r} ({self.why})"


def _next(s: DeclaredSetting, bound: float, up: bool) -> float:
    """The nearest value of the setting's type beyond ``bound``, upwards or downwards."""
    if s.type is int:
        return int(bound) + (1 if up else -1)
    return math.nextafter(float(bound), math.inf if up else -math.inf)


def cases_of(s: DeclaredSetting) -> list[Case]:
    b = s.setting
    cases = []
    if b.ge is not None:
        cases += [Case(s.name, b.ge, True, f"ge {b.ge}"),
                  Case(s.name, _next(s, b.ge, up=False), False, f"ge {b.ge}")]
    if b.gt is not None:
        cases += [Case(s.name, _next(s, b.gt, up=True), True, f"gt {b.gt}"),
                  Case(s.name, b.gt, False, f"gt {b.gt}")]
    if b.le is not None:
        cases += [Case(s.name, b.le, True, f"le {b.le}"),
                  Case(s.name, _next(s, b.le, up=True), False, f"le {b.le}")]
    if b.lt is not None:
        cases += [Case(s.name, _next(s, b.lt, up=False), True, f"lt {b.lt}"),
                  Case(s.name, b.lt, False, f"lt {b.lt}")]
    if s.bounds:
        cases.append(Case(s.name, "abc", False, "not a number"))
    cases += [Case(s.name, choice, True, "a choice") for choice in s.choices]
    if s.choices:
        cases.append(Case(s.name, f"not-{s.choices[0]}", False, "not a choice"))
    cases.append(Case(s.name, None, s.nullable, "null" if s.nullable else "not nullable"))
    return cases


CASES: list[Case] = [case for s in SETTINGS for case in cases_of(s)]
