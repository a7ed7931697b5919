"""How numbers, names and paths are written in the paper (TeX escaping, digit grouping, units)."""

from __future__ import annotations

import math
import re
from typing import Any

from .config import DATASET_TEX, METHOD_ORDER, METHOD_TEX, PROJECTION_ORDER, SIZE_ORDER


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: Any) -> str:
    """Escape LaTeX specials; non-ASCII punctuation is mapped, other non-ASCII dropped (pdflatex)."""
    s = str(text)
    s = (s.replace("\u2019", "'").replace("\u2018", "`").replace("\u201c", "``").replace("\u201d", "''")
         .replace("\u2014", "---").replace("\u2013", "--").replace("\u2026", "..."))
    out = "".join(_TEX_SPECIAL.get(ch, ch) for ch in s)
    out = out.replace("<", r"\textless{}").replace(">", r"\textgreater{}")
    return "".join(ch for ch in out if ord(ch) < 128)


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def group_digits(n: int, sep: str = r"\,") -> str:
    r"""``12\,345``: thousands separated by a TeX thin space (``sep``; plain text such as a figure label
    passes ``" "``)."""
    s = f"{abs(int(n)):,}".replace(",", sep)
    return ("-" if n < 0 else "") + s


def fmt_fixed(x: float, digits: int, sep: str = r"\,") -> str:
    s = f"{x:.{digits}f}"
    if abs(x) >= 10000:
        whole, _, frac = s.partition(".")
        s = group_digits(int(whole), sep) + ("." + frac if frac else "")
    return s


def fmt_ppl(x: float, sep: str = r"\,") -> str:
    if x >= 1000:
        return group_digits(round(x), sep)
    return fmt_fixed(x, 1 if x >= 10 else 2, sep)


def fmt_pct(x: float) -> str:
    return fmt_fixed(x, 1)


def fmt_ratio(x: float) -> str:
    return fmt_fixed(x, 2 if x < 10 else 1)


def fmt_seconds(x: float) -> str:
    if x >= 100:
        return group_digits(round(x))
    return fmt_fixed(x, 1 if x >= 1 else 2)


def fmt_sci(x: float, digits: int = 1) -> str:
    if not _finite(x):
        return r"\ensuremath{\infty}"
    if x == 0:
        return "0"
    e = int(math.floor(math.log10(abs(x))))
    if e == 3:  # grouped like every other four-digit number of the paper (8\,192)
        return group_digits(round(x))
    if -2 <= e <= 2:
        return fmt_fixed(x, max(0, digits - e)) if e < 1 else fmt_fixed(x, 0 if e >= 2 else 1)
    m = x / 10 ** e
    if round(m, digits) >= 10:
        m, e = m / 10, e + 1
    if abs(round(m, digits) - 1) < 1e-12:
        return rf"\ensuremath{{10^{{{e}}}}}"
    return rf"\ensuremath{{{m:.{digits}f}\times 10^{{{e}}}}}"


def fmt_count(x: float) -> str:
    return group_digits(round(x))


def fmt_params(x: float) -> str:
    if x >= 1e6:
        return fmt_fixed(x / 1e6, 2) + r"\,M"
    if x >= 1e4:
        return fmt_fixed(x / 1e3, 1) + r"\,k"
    return group_digits(round(x))


def fmt_plain(x: Any) -> str:
    """A parameter value in a table cell (λ in powers of ten, floats trimmed)."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e6:
        return str(int(x))
    if isinstance(x, float):
        return fmt_sci(x) if (abs(x) < 1e-2 or abs(x) >= 1e4) else f"{x:g}"
    return tex_escape(x)


def fmt_pow10(x: float) -> str:
    """λ-like values: ``10^{k}`` for powers of ten, scientific notation otherwise."""
    if _finite(x) and x > 0:
        k = math.log10(x)
        if abs(k - round(k)) < 1e-9:
            return rf"\ensuremath{{10^{{{int(round(k))}}}}}"
        return rf"\ensuremath{{{x / 10 ** math.floor(k):.1f}\times 10^{{{int(math.floor(k))}}}}}"
    return fmt_plain(x)


def method_tex(m: Any) -> str:
    return METHOD_TEX.get(str(m), tex_escape(m))


#: How a ``gap`` variant's "+modifier" reads in prose (its table keeps the registry's label).
VARIANT_MOD_TEX = {"resolve": "a final re-solve", "head": "a solved output head", "global": "global targets",
                   "next_embedding": "next-embedding targets", "landmarks": "landmark keys",
                   "ppmi": "PPMI embeddings and a solved output head"}
SWEEP_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}  # a count of solve sweeps in words
#: A variant's "+iterN" modifier: N bottom-up solve sweeps (its ``iterations``)
ITER_MOD = re.compile(r"iter(\d+)")


def variant_sweeps(name: Any) -> tuple[str, int | None]:
    """A variant label split into the label without its ``+iterN`` modifier and N: 1 without one, None with
    more than one (the count is then ambiguous)."""
    mods = str(name).split("+")
    sweeps = [int(m.group(1)) for m in map(ITER_MOD.fullmatch, mods) if m]
    base = "+".join(m for m in mods if not ITER_MOD.fullmatch(m))
    return base, (sweeps[0] if len(sweeps) == 1 else None if sweeps else 1)


def _variant_mod_tex(mod: str) -> str | None:
    """One "+modifier" in words; ``iterN`` (the variant's ``iterations``) reads "N solve sweeps", ``scaleX``
    (its ``proj_scale``) "projection scale X", ``lamX`` (its ridge ``lam``) "λ = X"."""
    m = ITER_MOD.fullmatch(mod)
    if m:
        n = int(m.group(1))
        return f"{SWEEP_WORDS.get(n, n)} solve sweeps" if n > 1 else None
    m = re.fullmatch(r"scale(\d+(?:\.\d+)?)", mod)
    if m:
        return f"projection scale {m.group(1)}"
    m = re.fullmatch(r"lam(\d+(?:\.\d+)?(?:e-?\d+)?)", mod)
    if m:
        return rf"$\lambda = {m.group(1)}$"
    return VARIANT_MOD_TEX.get(mod)


def variant_tex(name: Any) -> str:
    """A registry variant label ("attn_then_pil+global") in words ("attention→PIL with global targets");
    labels of another form are escaped as they are."""
    base, *mods = str(name).split("+")
    words = [_variant_mod_tex(m) for m in mods]
    if base not in METHOD_TEX or None in words:
        return tex_escape(name)
    return METHOD_TEX[base] + (" with " + " and ".join(words) if words else "")


def dataset_tex(d: Any) -> str:
    return DATASET_TEX.get(str(d), tex_escape(d))


def _natural_key(v):
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        s = str(v)
        if s in METHOD_ORDER:
            return (1, METHOD_ORDER.index(s), s)
        if s in SIZE_ORDER:
            return (1, SIZE_ORDER.index(s), s)
        if s in PROJECTION_ORDER:
            return (1, PROJECTION_ORDER.index(s), s)
        # labels with numbers in them sort by the numbers ("RF 4x" before "RF 16x")
        return (2, 0, tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)))
