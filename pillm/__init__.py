"""pillm — PIL-LM: Transformer language models with feed-forward layers solved in closed form.

    import pillm
    model, tokenizer = pillm.load("runs/pil_small")   # model(ids) -> logits [B, T, V]
"""

from .model import ModelConfig, PILLM, config_for
from .run import RunSpec, execute, load

__all__ = ["ModelConfig", "PILLM", "config_for", "RunSpec", "execute", "load"]
__version__ = "0.1.0"
