"""One run end to end: data → model → procedure → evaluation → ``result.json`` + checkpoint.

    from pillm.run import RunSpec, execute
    result, model = execute(RunSpec(method="pil_then_attn", size="small", dataset="wikitext2"), out="runs/pil")

Everything is written atomically (a temporary sibling, then ``os.replace``): an interrupted run
leaves no ``result.json``, so nothing half-done ever counts as a result.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from .data import TokenStream, load_tokenized, load_tokenizer
from .data import lambada_examples
from .evaluate import evaluate_stream, generate, lambada
from .model import PILLM, ModelConfig, config_for
from .train import PIL_METHODS, TrainConfig, ffn_kind_for, resolve_device, run_procedure
from .version import COMPUTE_VERSION

REPO = Path(__file__).resolve().parent.parent


@dataclass
class RunSpec:
    """Everything that defines a run; ``model`` and ``train`` hold field overrides."""

    method: str = "baseline"
    size: str = "small"
    dataset: str = "wikitext2"
    tokenizer: str = "auto"
    bipil: bool = True
    model: dict = field(default_factory=dict)  # ModelConfig overrides (expansion, fusion, dropout, …)
    train: dict = field(default_factory=dict)  # TrainConfig overrides (epochs, lr, lam, target, …)
    teacher: str | None = None  # checkpoint dir of a trained mlp model (target='teacher')
    save_checkpoint: bool = True
    lambada: bool = False  # also score LAMBADA (whole-word accuracy) with the trained model
    lambada_limit: int | None = None  # first N passages only (smoke runs)
    samples: dict | None = None  # {"prompts": [...], "seeds": [...], "tokens": 40, "temperature": 0.8, "top_k": 40}

    def configs(self, vocab_size: int) -> tuple[ModelConfig, TrainConfig]:
        tcfg = TrainConfig(**{"method": self.method, **self.train})
        mcfg = config_for(self.size, **{"vocab_size": vocab_size, "ffn": ffn_kind_for(self.method, self.bipil),
                                        **({"head": "solved"} if tcfg.solve_head else {}), **self.model})
        if mcfg.ffn != ffn_kind_for(self.method, mcfg.ffn != "pil"):
            raise ValueError(f"model override ffn={mcfg.ffn!r} conflicts with method={self.method!r}")
        return mcfg, tcfg


def environment() -> dict:
    """Provenance: software versions, device and the git commit of this repository."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "cuda": torch.version.cuda, "device_name": "cpu",
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
        env["gpu_count"] = torch.cuda.device_count()
    env["concurrent_runs"] = int(os.environ.get("PILLM_CONCURRENT_RUNS", "1"))  # runs sharing the machine
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pillm"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
        env["git_dirty"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        env["git_commit"] = os.environ.get("PILLM_GIT_COMMIT", "unknown")
    return env


def write_atomic(path: Path, write) -> None:
    """Call ``write(f)`` on a temporary sibling of ``path``, then rename it into place.

    Readers see the old file or the new one, never half of it; on error the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=2, default=str) + "\n"))


def save_checkpoint(model: PILLM, tokenizer, directory: Path, extra: dict | None = None) -> None:
    """``model.safetensors`` + ``config.json`` + the tokenizer, written into a temp dir then renamed."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding/head
    write_json_atomic(tmp / "config.json", {"model": model.config.to_dict(), **(extra or {})})
    tokenizer.save(tmp / "tokenizer")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def load(directory, device: str = "cpu") -> tuple[PILLM, object]:
    """Load a checkpoint: an eval-mode model (``model(ids)`` → logits ``[B, T, V]``) and its tokenizer."""
    directory = Path(directory)
    if (directory / "checkpoint").is_dir():
        directory = directory / "checkpoint"
    cfg_file = directory / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found: pass a directory written by `pillm train --out DIR`")
    cfg = ModelConfig.from_dict(json.loads(cfg_file.read_text())["model"])
    model = PILLM(cfg)
    load_model(model, str(directory / "model.safetensors"), device=str(device))
    model.to(device).eval()
    return model, load_tokenizer(directory / "tokenizer")


def sample_texts(model: PILLM, tokenizer, prompts: list[str], seeds: list[int], tokens: int = 40,
                 temperature: float = 0.8, top_k: int | None = 40) -> list[dict]:
    """Generation examples: each prompt continued once per seed (reproducible generators)."""
    device = next(model.parameters()).device
    out = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode(prompt, add_eos=False)], device=device)
        for seed in seeds:
            g = torch.Generator(device=device).manual_seed(seed)
            full = generate(model, ids, tokens, temperature=temperature, top_k=top_k, generator=g)
            out.append({"prompt": prompt, "seed": seed, "text": tokenizer.decode(full[0, ids.shape[1]:].tolist())})
    return out


def execute(spec: RunSpec, out: str | Path | None = None, *, progress: bool = True) -> tuple[dict, PILLM]:
    """Train and evaluate one run; returns ``(result, model)``.

    With ``out``, writes ``out/checkpoint/`` and then ``out/result.json`` (its presence marks
    the run complete).
    """
    probe = TrainConfig(**{"method": spec.method, **spec.train})  # validate before loading anything
    torch.manual_seed(probe.seed)
    device = resolve_device(probe.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    corpus = load_tokenized(spec.dataset, spec.tokenizer, max_train_tokens=probe.max_train_tokens)
    mcfg, tcfg = spec.configs(corpus.vocab_size)
    torch.manual_seed(tcfg.seed)  # the same seed gives the same init for every method
    model = PILLM(mcfg).to(device)
    teacher = None
    if spec.teacher is not None:
        teacher, _ = load(spec.teacher, device=str(device))
        # The student shares everything but the FFNs with its teacher, so that the features
        # are computed on the same activations the teacher's FFN saw.
        shared = {k: v for k, v in teacher.state_dict().items() if ".ffn." not in k}
        model.load_state_dict(shared, strict=False)
    train = TokenStream(corpus.train, device)
    valid = TokenStream(corpus.valid, device)
    t0 = time.perf_counter()
    log = run_procedure(model, train, valid, tcfg, teacher=teacher, progress=progress)
    total_s = time.perf_counter() - t0
    ev = dict(batch_size=tcfg.batch_size, max_tokens=tcfg.max_eval_tokens)
    v = evaluate_stream(model, valid.ids, **ev)
    t = evaluate_stream(model, corpus.test, **ev)
    extra = {}
    if spec.lambada:
        kind = "openai_wikitext" if corpus.tokenizer.kind == "word" else "openai"
        examples = lambada_examples(kind)[: spec.lambada_limit]
        extra["lambada"] = lambada(model, corpus.tokenizer, examples, progress=progress) | {"file": kind}
    if spec.samples:
        extra["samples"] = sample_texts(model, corpus.tokenizer, **spec.samples)
    result = {
        "method": spec.method, "dataset": spec.dataset, "size": spec.size, "seed": tcfg.seed,
        "spec": asdict(spec), "model_config": mcfg.to_dict(), "train_config": tcfg.to_dict(),
        "valid_ppl": v["ppl"], "valid_acc": v["acc"], "valid_loss": v["loss"],
        "test_ppl": t["ppl"], "test_acc": t["acc"], "test_loss": t["loss"], "test_tokens": t["tokens"],
        "train_s": log.seconds("adamw"), "pil_s": log.seconds("pil"), "total_s": total_s,
        "optimizer_steps": log.optimizer_steps, "updated_params": log.updated_params,
        "params": model.parameter_counts(), "solves": log.solves, "phases": log.phases, "curve": log.curve,
        "train_tokens": int(corpus.train.numel()), "data_files": corpus.files, "data_note": corpus.note,
        **extra, "environment": environment(), "compute_version": COMPUTE_VERSION, "complete": True,
    }
    if out is not None:
        out = Path(out)
        if spec.save_checkpoint:
            save_checkpoint(model, corpus.tokenizer, out / "checkpoint",
                            {"train": tcfg.to_dict(), "dataset": spec.dataset, "method": spec.method})
        write_json_atomic(out / "result.json", result)  # last: its presence means the run is done
    return result, model


__all__ = ["RunSpec", "execute", "load", "environment", "write_json_atomic", "save_checkpoint", "PIL_METHODS"]
