"""A tiny deterministic CPU computation whose numbers are stored with the compute version.

``tests/test_tripwire.py`` recomputes it and fails when the numbers moved while
:data:`pillm.version.COMPUTE_VERSION` did not: a change that moves results must bump the version (which
makes the stored results stale). After bumping, regenerate the golden file:

    python -m pillm.tripwire
"""

from __future__ import annotations

import json
import math

from .run import REPO
from .version import COMPUTE_VERSION

GOLDEN = REPO / "tests" / "tripwire.json"

#: A slice of WikiText-2 with its vocabulary cut to the most frequent ids (the rest map to the last id, as
#: an unknown word would) and a model smaller than ``tiny``, so that the whole check takes seconds on one
#: CPU core: one AdamW method, one PIL method (η search, solves, final re-solve) and pure PIL with the
#: solved head.
VOCAB = 512
TOKENS = {"train": 4096, "valid": 1024, "test": 1024}
MODEL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32, "vocab_size": VOCAB}
TRAIN = {"epochs": 1, "batch_size": 8, "search_tokens": 1024, "device": "cpu", "eval_every_epoch": False,
         "seed": 0}
CASES = {"baseline": {}, "pil_then_attn": {"final_resolve": True}, "pil_pure": {"solve_head": True}}

#: Relative tolerance: far below any change of method, above the last-digit noise of CPU kernels.
RTOL = 1e-5


def compute() -> dict[str, dict[str, float]]:
    """Validation and test loss and accuracy of each case after training on the slice."""
    import torch

    from .data import TokenStream, load_tokenized
    from .evaluate import evaluate_stream
    from .model import PILLM, config_for
    from .train import TrainConfig, ffn_kind_for, run_procedure

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    corpus = load_tokenized("wikitext2", max_train_tokens=TOKENS["train"])
    split = {name: TokenStream(getattr(corpus, name)[:n].clamp(max=VOCAB - 1)) for name, n in TOKENS.items()}
    out = {}
    for method, extra in CASES.items():
        cfg = TrainConfig(method=method, **TRAIN, **extra)
        torch.manual_seed(cfg.seed)
        model = PILLM(config_for("tiny", ffn=ffn_kind_for(method), **MODEL,
                                 **({"head": "solved"} if cfg.solve_head else {})))
        run_procedure(model, split["train"], split["valid"], cfg, progress=False)
        v, t = (evaluate_stream(model, split[s].ids, batch_size=8) for s in ("valid", "test"))
        out[method] = {"valid_loss": v["loss"], "valid_acc": v["acc"], "test_loss": t["loss"], "test_acc": t["acc"]}
    return out


def moved(golden: dict, now: dict) -> list[str]:
    """The numbers of ``now`` that differ from ``golden`` beyond :data:`RTOL`, as readable lines."""
    lines = []
    for case, numbers in golden.items():
        for key, value in numbers.items():
            got = now.get(case, {}).get(key)
            if got is None or not math.isclose(got, value, rel_tol=RTOL):
                lines.append(f"{case}.{key}: stored {value!r}, now {got!r}")
    return lines


def regenerate() -> dict:
    doc = {"compute_version": COMPUTE_VERSION, "numbers": compute()}
    GOLDEN.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


if __name__ == "__main__":
    print(json.dumps(regenerate(), indent=2))
