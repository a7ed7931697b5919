"""pillm — PIL-LM: Transformer language models with feed-forward layers solved in closed form.

    import pillm
    model, tokenizer = pillm.load("runs/pil_small")   # model(ids) -> logits [B, T, V]
    ids = torch.tensor([tokenizer.encode("the game was", add_eos=False)])
    text = tokenizer.decode(pillm.generate(model, ids, 20, temperature=0.8, top_k=40)[0].tolist())
"""

from .evaluate import generate
from .model import ModelConfig, PILLM, config_for
from .run import RunSpec, execute, load

__all__ = ["ModelConfig", "PILLM", "config_for", "RunSpec", "execute", "load", "generate"]
__version__ = "0.1.0"
