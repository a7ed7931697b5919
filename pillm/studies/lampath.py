"""Ridge λ chosen per layer on validation, from one Gram matrix per layer.

A model trained by attention→PIL (a run that kept its checkpoint) has every FFN readout re-solved
bottom-up as in its own closed-form phase (readouts zeroed first, the checkpoint's target, η grid and
search slice), except that each layer also chooses its ridge λ: the layer's statistics ``HᵀH``,
``HᵀY`` are accumulated once over the training split, every λ of ``lams`` is solved from them
(:meth:`pillm.solver.RidgeAccumulator.solve` leaves them intact), and the (λ, η) pair with the lowest
loss on the validation search windows is kept. The layers above see the layers below as chosen (fresh
inputs, never stale ones). No optimizer step. With ``lams = (checkpoint's λ,)`` the run reproduces the
checkpoint's own solve: the control of this experiment.

Cost over the checkpoint's solve: one Cholesky per λ (``D³/3`` for ``D`` features) and ``len(lams)`` times
the η search's validation passes; the pass over the training split, which dominates, is made once. The
solve is :func:`pillm.train.solve_layer` with a λ grid.

    pillm experiments --profile paper --only lambda_path     # notebooks/lambda_path.ipynb
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..model import PILLM
from ..train import solve_layer
from .resolve import ResolveSpec, finish, open_checkpoint, timed_resolve

#: Decades around the hybrids' λ = 1e-4 (relative to the mean diagonal of HᵀH) up to 10: the λ ablation
#: chose 1e-1, the top of its grid (results/paper/ablation_lambda), so the grid reaches two decades above.
LAMS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class LambdaPathSpec(ResolveSpec):
    """One run: which attention→PIL checkpoint, and the λ grid every layer chooses from."""

    checkpoint: str  # a run directory's checkpoint/ (written with save_checkpoint=True), or the run directory
    lams: tuple = LAMS  # relative ridge λ (× mean diag of HᵀH), as TrainConfig.lam
    dataset: str = "wikitext2"  # the data the checkpoint was trained on (its tokenizer reads it)
    tokenizer: str = "auto"
    train: dict = field(default_factory=dict)  # TrainConfig overrides (eta_grid, search_tokens, seed, device, …)

    def __post_init__(self) -> None:
        lams = tuple(float(v) for v in self.lams)
        if not lams:
            raise ValueError("lams is empty: give at least one ridge λ, e.g. lams=(1e-4, 1e-2, 1.0)")
        bad = [v for v in lams if not (math.isfinite(v) and v >= 0)]
        if bad:
            raise ValueError(f"every λ must be finite and >= 0 (relative to mean diag(HᵀH)), got {bad}")
        self.lams = tuple(sorted(set(lams)))
        if "lam" in self.train:
            raise ValueError("train['lam'] would be ignored: a λ-path run chooses λ from `lams`; "
                             "give lams=(λ,) to solve with one λ")


def execute(spec: LambdaPathSpec, out: str | Path | None = None, *, progress: bool = True) -> tuple[dict, PILLM]:
    """Re-solve ``spec.checkpoint``'s FFNs with λ chosen per layer; writes ``out/result.json``."""
    r = open_checkpoint(spec.checkpoint, spec.dataset, spec.tokenizer, spec.train, "λ-path")
    r.before["lam"] = r.cfg.lam
    log, solve_s = timed_resolve(r, lambda layer: solve_layer(r.model, layer, r.train, r.search, r.cfg, r.cfg.target,
                                                              None, progress, lams=spec.lams), "lambda_path")
    result = finish(r, spec, "lambda_path", log, solve_s, out, target=r.cfg.target, lams=list(spec.lams),
                    chosen_lams=[s["lam"] for s in log.solves])
    return result, r.model


__all__ = ["LAMS", "LambdaPathSpec", "execute"]
