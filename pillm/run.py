"""One run end to end: data → model → procedure → evaluation → ``result.json`` + checkpoint.

    from pillm.run import RunSpec, execute
    result, model = execute(RunSpec(method="pil_then_attn", size="small", dataset="wikitext2"), out="runs/pil")

Everything is written atomically (a temporary sibling, then ``os.replace``), with the user's umask:
an interrupted run leaves no run directory, so nothing half-done ever counts as a result.
"""

from __future__ import annotations

import contextlib
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
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from .data import TokenStream, load_tokenized, load_tokenizer
from .data import lambada_examples
from .evaluate import evaluate_stream, generate, lambada
from .model import PILLM, ModelConfig, config_for
from .train import TrainConfig, ffn_kind_for, rank_world, resolve_device, run_procedure
from .atomic import file_mode, umask, write_atomic, write_json_atomic
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


def utc_now() -> str:
    """The time now in UTC, as every record of this library writes it."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def environment() -> dict:
    """Provenance: software versions, device and the git commit of this repository."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "cuda": torch.version.cuda, "device_name": "cpu", "date": utc_now()}
    if torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
        env["gpu_count"] = torch.cuda.device_count()
    env["concurrent_runs"] = int(os.environ.get("PILLM_CONCURRENT_RUNS", "1"))  # runs sharing the machine
    # A copied tree (a lent GPU machine) may carry a stale .git: the commit it was sent at takes precedence.
    if os.environ.get("PILLM_GIT_COMMIT"):
        env["git_commit"] = os.environ["PILLM_GIT_COMMIT"]
        return env
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pillm"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
        env["git_dirty"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        env["git_commit"] = "unknown"
    return env


class RunExistsError(FileExistsError):
    """The output directory already holds a finished run, or is not a run directory at all."""


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file or holds a damaged one; the message names the file."""


_RUN_FILES = {"result.json", "run.json", "checkpoint"}  # what a run directory holds


def check_out(out, *, overwrite: bool = False) -> Path:
    """Check before any work that ``out`` can receive a run; returns it as a ``Path``.

    Refuses a finished run (``result.json``) unless ``overwrite``, a file, a non-empty directory that is
    not a run directory, and a place where nothing can be written (tried, not guessed from the mode).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"{out} is an existing file, not a run directory; choose another output directory")
    if out.is_dir():
        if (out / "result.json").exists() and not overwrite:
            raise RunExistsError(f"{out} holds a finished run; choose another output directory, "
                                 "or replace it with --overwrite (overwrite=True)")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _RUN_FILES)
        if foreign:
            raise RunExistsError(f"{out} is not a run directory (it holds {', '.join(foreign[:3])}); "
                                 "choose a new or empty output directory")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RunExistsError(f"{parent} is a file, so {out} cannot be created; choose another output directory")
    try:
        tempfile.TemporaryDirectory(dir=parent).cleanup()  # can we write there at all?
    except OSError as err:
        raise RunExistsError(f"cannot create {out}: {parent} is not writable ({err.strerror}); "
                             "choose another output directory") from None
    return out


@contextlib.contextmanager
def staged_directory(directory, *, overwrite: bool = False):
    """Yield an empty temporary sibling of ``directory`` to fill; on success it becomes ``directory``.

    The directory appears whole or not at all: an exception (Ctrl-C included) removes the temporary and
    leaves an existing ``directory`` untouched; a finished run is replaced only with ``overwrite``.
    """
    directory = check_out(directory, overwrite=overwrite)
    with _staged(directory) as tmp:
        yield tmp


@contextlib.contextmanager
def _staged(directory: Path):
    """The temporary sibling and the renames behind :func:`staged_directory`, without its checks.

    Temporaries are hidden (``.NAME.partial-PID-…``), and a killed process's are removed by the next
    write to the same directory.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f".{directory.name}.partial-*"):
        if not _pid_alive(stale.name.rsplit("-", 2)[-2]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.partial-{os.getpid()}-"))
    old = directory.with_name(f".{directory.name}.partial-{os.getpid()}-old")
    try:
        tmp.chmod(0o777 & ~umask())  # mkdtemp's 0o700 would hide the run from colleagues
        yield tmp
        if directory.exists():  # a directory cannot be renamed onto a non-empty one: move it aside first
            os.replace(directory, old)
        os.replace(tmp, directory)
    except BaseException:
        if old.exists() and not directory.exists():
            os.replace(old, directory)  # put the previous directory back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's live process
        pass
    return True


def save_checkpoint(model: PILLM, tokenizer, directory: Path, extra: dict | None = None) -> None:
    """``model.safetensors`` + ``config.json`` + the tokenizer, written into a temp dir then renamed."""
    with _staged(directory) as tmp:
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding/head
        (tmp / "model.safetensors").chmod(file_mode())  # safetensors writes 0o600
        write_json_atomic(tmp / "config.json", {"model": model.config.to_dict(), **(extra or {})})
        tokenizer.save(tmp / "tokenizer")


def checkpoint_dir(directory) -> Path:
    """The checkpoint inside a run directory (or the checkpoint directory itself), checked to exist."""
    directory = Path(directory)
    if (directory / "checkpoint").is_dir():
        directory = directory / "checkpoint"
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint {directory} does not exist; pass a directory written by "
                                "`pillm train --out DIR`")
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory} is not a checkpoint (no config.json); pass a directory written "
                                "by `pillm train --out DIR`")
    return directory


def load(directory, device: str = "cpu") -> tuple[PILLM, object]:
    """Load a checkpoint: an eval-mode model (``model(ids)`` → logits ``[B, T, V]``) and its tokenizer."""
    directory = checkpoint_dir(directory)
    damaged = "is damaged ({}); train the run again or restore the checkpoint from a copy"
    try:
        cfg = ModelConfig.from_dict(json.loads((directory / "config.json").read_text())["model"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{directory / 'config.json'} " + damaged.format(_short(err))) from err
    model = PILLM(cfg)
    weights = directory / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing; train the run again or restore the checkpoint from a copy")
    try:
        load_model(model, str(weights), device=str(device))
    except (SafetensorError, RuntimeError, OSError) as err:
        raise CheckpointError(f"{weights} " + damaged.format(_short(err))) from err
    model.to(device).eval()
    try:
        tokenizer = load_tokenizer(directory / "tokenizer")
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{directory / 'tokenizer'} " + damaged.format(_short(err))) from err
    return model, tokenizer


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:160]


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


def execute(spec: RunSpec, out: str | Path | None = None, *, progress: bool = True,
            overwrite: bool = False) -> tuple[dict, PILLM]:
    """Train and evaluate one run; returns ``(result, model)``.

    With ``out``, writes ``out/checkpoint/`` and ``out/result.json`` (its presence marks the run
    complete) into a temporary sibling that is renamed to ``out`` at the end: the run directory appears
    whole or not at all. A finished run in ``out`` is refused unless ``overwrite``.
    """
    probe = TrainConfig(**{"method": spec.method, **spec.train})  # validate before loading anything
    device = resolve_device(probe.device)
    if out is not None:
        check_out(out, overwrite=overwrite)
    if spec.teacher is not None:
        checkpoint_dir(spec.teacher)
    torch.manual_seed(probe.seed)
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
    train, valid = TokenStream(corpus.train, device), TokenStream(corpus.valid, device)
    t0 = time.perf_counter()
    log = run_procedure(model, train, valid, tcfg, teacher=teacher, progress=progress)
    total_s = time.perf_counter() - t0
    ev = dict(batch_size=tcfg.batch_size, max_tokens=tcfg.max_eval_tokens)
    scores = {"valid": evaluate_stream(model, valid.ids, **ev), "test": evaluate_stream(model, corpus.test, **ev)}
    extra = {}
    if spec.lambada:
        kind = "openai_wikitext" if corpus.tokenizer.kind == "word" else "openai"
        examples = lambada_examples(kind)[: spec.lambada_limit]
        extra["lambada"] = lambada(model, corpus.tokenizer, examples, progress=progress) | {"file": kind}
    if spec.samples:
        extra["samples"] = sample_texts(model, corpus.tokenizer, **spec.samples)
    result = result_record(spec, mcfg, tcfg, model, corpus, log, scores, total_s, extra)
    if out is not None and rank_world()[0] == 0:  # under torchrun every rank holds the same model
        with staged_directory(out, overwrite=overwrite) as tmp:
            if spec.save_checkpoint:
                save_checkpoint(model, corpus.tokenizer, tmp / "checkpoint",
                                {"train": tcfg.to_dict(), "dataset": spec.dataset, "method": spec.method})
            write_json_atomic(tmp / "result.json", result)  # its presence means the run is done
    return result, model


def result_record(spec: RunSpec, mcfg: ModelConfig, tcfg: TrainConfig, model: PILLM, corpus, log, scores: dict,
                  total_s: float, extra: dict) -> dict:
    """The one place where a run's ``result.json`` is assembled."""
    v, t = scores["valid"], scores["test"]
    return {
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


__all__ = ["RunSpec", "execute", "load", "environment", "write_atomic", "write_json_atomic", "save_checkpoint",
           "staged_directory", "check_out", "checkpoint_dir", "RunExistsError", "CheckpointError"]
