"""The numbers the text uses (one TeX macro each, with its source) and the wording rules."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import COMPETITIVE_TOL, PAR_TOL, SIMILAR_TOL


@dataclass
class Number:
    name: str
    text: str
    source: Path
    note: str
    value: Any = None


class Numbers:
    """Named numbers computed from results files; templates read them as ``n.Name``.

    Reading ``n.Name`` returns ``\\Name{}`` and marks the macro used; only used macros are written
    to ``numbers.tex``. A name that was not computed (its results are missing) is an error in the
    template (StrictUndefined), so templates must guard with ``n.has('Name', ...)``.
    """

    _NAME = re.compile(r"^[A-Za-z]+$")

    def __init__(self):
        self._defs: dict[str, Number] = {}
        self.used: set[str] = set()

    def add(self, name: str, text: str, source: Path, note: str, value: Any = None) -> None:
        if not self._NAME.match(name):
            raise ValueError(f"macro name {name!r} must be letters only")
        if name in self._defs:
            raise ValueError(f"macro {name!r} defined twice")
        self._defs[name] = Number(name, text, Path(source), note, value)

    def has(self, *names: str) -> bool:
        return all(n in self._defs for n in names)

    def value(self, name: str):
        return self._defs[name].value

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._defs:
            raise AttributeError(f"number {name!r} is not available")
        self.used.add(name)
        return "\\" + name + "{}"

    def __getitem__(self, name: str) -> str:
        try:
            return self.__getattr__(name)
        except AttributeError as e:
            raise KeyError(name) from e

    def defined(self) -> dict[str, Number]:
        return dict(self._defs)

    def used_numbers(self) -> list[Number]:
        return [self._defs[k] for k in sorted(self.used)]


def verdict(x: float, ref: float, lower_is_better: bool = True) -> str:
    """Wording rule of the paper: compare a result ``x`` with a reference ``ref``.

    ``better`` (more than :data:`PAR_TOL` better), ``on_par`` (within ``PAR_TOL``), ``competitive``
    (worse by at most :data:`COMPETITIVE_TOL`, relative), ``worse`` otherwise.
    """
    r = x / ref if lower_is_better else ref / x if x else math.inf
    if r < 1 - PAR_TOL:
        return "better"
    if r <= 1 + PAR_TOL:
        return "on_par"
    if r <= 1 + COMPETITIVE_TOL:
        return "competitive"
    return "worse"


def similar(a: float, b: float) -> bool:
    return abs(a - b) <= SIMILAR_TOL * min(abs(a), abs(b))
