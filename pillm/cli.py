"""Command line: train, evaluate and sample from PIL-LM models, and the repository workflows.

    pillm train --method pil_then_attn --size small --dataset wikitext2 --epochs 10 --out runs/pil
    pillm evaluate --checkpoint runs/pil --dataset wikitext2 --split test
    pillm generate --checkpoint runs/pil --prompt "the game was"
    torchrun --nproc_per_node=2 -m pillm train ...      # PIL statistics sharded + all-reduced, DDP

Training flags are the fields of ``ModelConfig`` and ``TrainConfig``, with their defaults. Every
expected failure (a bad flag, missing or damaged data or checkpoint, an output directory that would be
overwritten) is one line on stderr; ``--debug`` or ``PILLM_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import threading
from dataclasses import MISSING, fields

from .data import CORPORA
from .model import FUSIONS, PRESETS, PROJ_INITS, ModelConfig
from .targets import TARGETS
from .train import EMBED_INITS, METHODS, TrainConfig

METHOD_HELP = {
    "baseline": "Transformer with MLP feed-forward layers, all trained by AdamW",
    "attn_only": "no feed-forward layers; attention and embeddings trained by AdamW",
    "lora": "feed-forward layers of low rank, trained by AdamW",
    "rf_adamw": "the random features of PIL, their readout trained by AdamW instead of solved",
    "pil_pure": "no optimizer at all: every feed-forward layer solved in closed form (ridge)",
    "pil_then_attn": "feed-forward layers solved first, then attention trained by AdamW",
    "attn_then_pil": "attention trained by AdamW first, then the feed-forward layers solved",
    "alternating": "each epoch: AdamW on attention, then the feed-forward layers re-solved",
}
TARGET_HELP = {
    "local": "move each layer's output along the loss gradient of an early exit at that layer",
    "global": "the same with the gradient of the full network's loss",
    "next_embedding": "move the residual stream toward the next token's embedding",
    "teacher": "copy the feed-forward output of a trained baseline (--teacher)",
    "zero": "solve for zero output: reproduces the attention-only model",
}
TRAIN_DATASETS = tuple(c for c in CORPORA if c != "lambada")  # LAMBADA is a test set only
NO_OPTIMIZER = ("pil_pure",)  # the methods for which --epochs 0 is a complete run

# Config fields that are not flags of their own: set by --method, --size, --single/--bipil, the data.
_NOT_FLAGS = {"method", "eta_grid", "vocab_size", "ffn", "head"}
_CHOICES = {"target": TARGETS, "final_target": TARGETS, "embed_init": EMBED_INITS, "fusion": FUSIONS,
            "proj_init": PROJ_INITS}
_FIELD_HELP = {
    "block_size": "context length in tokens", "n_layer": "Transformer blocks", "n_head": "attention heads",
    "n_embd": "model width", "dropout": "dropout probability (gradient phases)",
    "expansion": "feed-forward hidden width / model width (per projection for Bi-PIL)",
    "fusion": "how Bi-PIL fuses its two random projections",
    "lora_rank": "rank of the lora method's feed-forward layers",
    "proj_scale": "standard deviation of the random pre-activations",
    "proj_init": "random projections, or landmarks drawn from the layer's own inputs",
    "epochs": "passes over the training tokens (0 only for pil_pure)",
    "batch_size": "sequences per optimizer step and per evaluation batch", "lr": "AdamW peak learning rate",
    "min_lr_ratio": "the cosine schedule decays to lr × this", "warmup_frac": "share of the steps spent warming up",
    "weight_decay": "AdamW weight decay", "grad_clip": "gradient norm clip",
    "lam": "ridge λ, relative to the mean diagonal of HᵀH",
    "target": "what each solved layer regresses on (see the list below)",
    "iterations": "re-solves of every layer per closed-form phase",
    "search_tokens": "validation tokens for the step-size search",
    "final_resolve": "re-solve every layer once more at the end", "final_target": "target of the final re-solve",
    "solve_head": "pil_pure: closed-form output head calibrated on validation",
    "embed_init": "ppmi: token embeddings from an SVD of the PPMI matrix (closed form)",
    "ppmi_window": "co-occurrence window for --embed-init ppmi",
    "solve_batch_size": "sequences per batch when accumulating HᵀH",
    "solve_tokens": "training tokens each feed-forward solve accumulates over, in evenly spaced windows",
    "max_train_tokens": "train on the first N tokens only",
    "max_eval_tokens": "score the first N tokens of valid and test only",
    "eval_every_epoch": "record validation perplexity after every epoch",
    "log_every": "optimizer steps between progress updates",
    "seed": "random seed (the same seed gives every method the same initialisation)",
    "device": "auto, cpu, cuda or cuda:N", "amp": "bf16 autocast on CUDA", "compile": "torch.compile the model",
}
_PRESET_FIELDS = {k for preset in PRESETS.values() for k in preset}


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (argparse prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Help(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=min(110, max(80, shutil.get_terminal_size().columns)))


# -- value checks, run by argparse itself so that a bad value is exit 2 before anything loads -----------

def _int_at_least(low: int):
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not allowed; use an integer >= {low}")
        return value
    return check


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda or cuda:N")


def _field_type(f):
    kind = str(f.type).replace(" | None", "").replace("Optional[", "").rstrip("]")
    return {"int": int, "float": float, "str": str, "bool": bool}[kind]


_LOWEST = {"epochs": 0, "iterations": 0, "seed": 0, "max_train_tokens": None}  # else 1; None: checked later


def _add_config_flags(group, cls) -> None:
    """One flag per field of the config dataclass ``cls``, typed as the field and defaulting to ``None``
    (the dataclass decides), its help showing the dataclass default."""
    for f in fields(cls):
        if f.name in _NOT_FLAGS:
            continue
        typ = _field_type(f)
        kw = dict(default=None, help=f"{_FIELD_HELP.get(f.name, f.name.replace('_', ' '))} (default: {_default(f)})")
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif f.name == "device":
            kw.update(type=_device, metavar="DEVICE")
        elif f.name in _CHOICES:
            kw.update(choices=_CHOICES[f.name])
        elif typ is int:
            low = _LOWEST.get(f.name, 1)
            kw.update(type=int if low is None else _int_at_least(low), metavar="N")
        else:
            kw.update(type=typ, metavar="X")
        group.add_argument("--" + f.name.replace("_", "-"), **kw)


def _default(f) -> str:
    """A config field's default as its flag's help shows it."""
    if f.name in _PRESET_FIELDS:
        return "set by --size"
    if (f.name.startswith("max_") or f.name == "solve_tokens") and f.default is None:
        return "whole split"
    return str(f.default if f.default is not MISSING else f.default_factory())


MODEL_FLAGS = [f.name for f in fields(ModelConfig) if f.name not in _NOT_FLAGS]
TRAIN_FLAGS = [f.name for f in fields(TrainConfig) if f.name not in _NOT_FLAGS]

_TRAIN_EPILOG = """\
methods:
{methods}

targets (--target, --final-target) of the closed-form solves:
{targets}

sizes (--size): {sizes}
datasets (--dataset): {datasets}; files are read from $PILLM_DATA_DIR or the repository's data/ folder

example (a first run on a laptop CPU):
  pillm train --method pil_then_attn --size tiny --epochs 1 --max-train-tokens 20000 \\
      --max-eval-tokens 20000 --device cpu --out runs/first
"""


def _train_parser(sub) -> None:
    sizes = ", ".join(f"{k} ({v['n_layer']} layers, width {v['n_embd']})" for k, v in PRESETS.items())
    epilog = _TRAIN_EPILOG.format(
        methods="\n".join(f"  {m:<15} {METHOD_HELP[m]}" for m in METHODS),
        targets="\n".join(f"  {t:<15} {TARGET_HELP[t]}" for t in TARGETS),
        sizes=sizes, datasets=", ".join(TRAIN_DATASETS))
    p = sub.add_parser("train", help="train and evaluate one model; writes OUT/result.json and OUT/checkpoint/",
                       description="Train one model, evaluate it on the validation and test splits, and write\n"
                       "OUT/result.json and OUT/checkpoint/. The run directory appears whole or not at all.",
                       epilog=epilog, formatter_class=_Help)
    p.add_argument("--method", required=True, choices=METHODS, metavar="METHOD",
                   help="training procedure: one of the methods listed below")
    p.add_argument("--out", required=True, help="run directory to create (refused if it holds a finished run)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--size", default="small", choices=tuple(PRESETS), help="model preset (default: small)")
    p.add_argument("--dataset", default="wikitext2", choices=TRAIN_DATASETS, help="corpus (default: wikitext2)")
    p.add_argument("--tokenizer", default="auto", choices=("auto", "word", "bpe"),
                   help="auto: words for WikiText-2 and PTB, BPE for TinyStories (default: auto)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--single", dest="bipil", action="store_false", help="one random projection (PIL)")
    mode.add_argument("--bipil", dest="bipil", action="store_true", help="two fused projections (Bi-PIL, default)")
    p.set_defaults(bipil=True)
    p.add_argument("--teacher", help="checkpoint directory of a trained baseline (for --target teacher)")
    p.add_argument("--no-checkpoint", dest="save_checkpoint", action="store_false",
                   help="write result.json only, no checkpoint/")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(p.add_argument_group("model (ModelConfig fields)"), ModelConfig)
    _add_config_flags(p.add_argument_group("training (TrainConfig fields)"), TrainConfig)
    _common(p, cmd_train)


def _common(p, handler) -> None:
    """The ``--debug`` flag of every command, and the function that runs it."""
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of an error (also PILLM_DEBUG=1)")
    p.set_defaults(handler=handler)


def spec_from_args(args):
    """Build a RunSpec; only flags that were given override the defaults."""
    from .run import RunSpec

    pick = lambda names: {n: getattr(args, n) for n in names if getattr(args, n) is not None}  # noqa: E731
    return RunSpec(method=args.method, size=args.size, dataset=args.dataset, tokenizer=args.tokenizer,
                   bipil=args.bipil, model=pick(MODEL_FLAGS), train=pick(TRAIN_FLAGS), teacher=args.teacher,
                   save_checkpoint=args.save_checkpoint)


def _check_train_args(parser, args) -> None:
    """Checks that need several flags or the dataclasses' own validation; each names its flag."""
    spec = spec_from_args(args)
    try:
        mcfg, tcfg = spec.configs(vocab_size=1)
    except ValueError as err:
        field = re.match(r"\w+", str(err))
        flag = f"argument --{field.group().replace('_', '-')}: " if field and field.group() in \
            {*MODEL_FLAGS, *TRAIN_FLAGS} else ""
        parser.error(f"{flag}{err}")
    if tcfg.max_train_tokens is not None and tcfg.max_train_tokens < mcfg.block_size + 1:
        parser.error(f"argument --max-train-tokens: {tcfg.max_train_tokens} is too few; use at least "
                     f"{mcfg.block_size + 1} (the block size of --size {args.size}, plus one), or leave it out")
    if tcfg.epochs == 0 and args.method not in NO_OPTIMIZER:
        parser.error(f"argument --epochs: 0 trains nothing with --method {args.method}; use at least 1 "
                     f"(0 is allowed only for {', '.join(NO_OPTIMIZER)})")
    if tcfg.target == "teacher" and args.teacher is None:
        parser.error("argument --teacher: --target teacher needs --teacher DIR (a trained baseline's checkpoint)")
    if (device := tcfg.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"argument --device: {device} requested but CUDA is not available here; use cpu or auto")
        if int(device.partition(":")[2] or 0) >= torch.cuda.device_count():
            parser.error(f"argument --device: {device} does not exist; this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")


def _fmt(x: float) -> str:
    return f"{x:,.1f}" if x >= 100 else f"{x:.2f}"


def cmd_train(args) -> int:
    from .run import execute

    _maybe_init_distributed()
    result, _ = execute(spec_from_args(args), out=args.out, progress=not args.quiet, overwrite=args.overwrite)
    wrote = "result.json" + (" and checkpoint/" if args.save_checkpoint else "")
    print(f"wrote {wrote} to {args.out}: {result['method']} on {result['dataset']}, "
          f"test perplexity {_fmt(result['test_ppl'])} (valid {_fmt(result['valid_ppl'])}), "
          f"test accuracy {100 * result['test_acc']:.1f} %, {result['total_s']:.0f} s "
          f"({result['train_s']:.0f} s AdamW, {result['pil_s']:.0f} s closed form, "
          f"{result['optimizer_steps']} optimizer step{'' if result['optimizer_steps'] == 1 else 's'})")
    return 0


def _maybe_init_distributed() -> None:
    """Under torchrun (``WORLD_SIZE`` > 1) join the process group: NCCL on GPUs, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on a split; prints JSON", formatter_class=_Help,
                       description="Score a checkpoint: perplexity and next-token accuracy on a split, or\n"
                       "whole-word accuracy on LAMBADA. Prints JSON.",
                       epilog="example:\n  pillm evaluate --checkpoint runs/first --split test --device cpu")
    p.add_argument("--checkpoint", required=True, help="run directory or its checkpoint/")
    p.add_argument("--dataset", default="wikitext2", choices=CORPORA, help="corpus (default: wikitext2)")
    p.add_argument("--split", default="test", choices=("valid", "test"), help="(default: test)")
    p.add_argument("--stride", type=_int_at_least(1), metavar="N",
                   help="sliding-window stride (default: non-overlapping windows)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=32, metavar="N", help="(default: 32)")
    p.add_argument("--max-tokens", type=_int_at_least(1), metavar="N",
                   help="score only the first N tokens of the split (default: all)")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _common(p, cmd_evaluate)


def cmd_evaluate(args) -> int:
    import json

    from .data import lambada_examples, load_tokenized
    from .evaluate import evaluate_stream, lambada
    from .run import checkpoint_dir, load
    from .train import resolve_device

    checkpoint_dir(args.checkpoint)  # before the data loads
    device = resolve_device(args.device)
    model, tokenizer = load(args.checkpoint, device=str(device))
    if args.stride is not None and args.stride > model.config.block_size:
        raise ValueError(f"--stride {args.stride} exceeds the checkpoint's block size "
                         f"{model.config.block_size}; use 1 … {model.config.block_size}")
    if args.dataset == "lambada":
        kind = "openai_wikitext" if tokenizer.kind == "word" else "openai"
        out = lambada(model, tokenizer, lambada_examples(kind), progress=not args.quiet) | {"lambada_file": kind}
    else:
        corpus = load_tokenized(args.dataset, tokenizer.kind)
        if corpus.tokenizer.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"the checkpoint's tokenizer ({tokenizer.vocab_size} types) does not match "
                             f"{args.dataset}'s ({corpus.tokenizer.vocab_size}); evaluate on the training corpus")
        ids = getattr(corpus, args.split)
        out = evaluate_stream(model, ids, stride=args.stride, batch_size=args.batch_size, max_tokens=args.max_tokens,
                              progress=not args.quiet)
    print(json.dumps({"checkpoint": args.checkpoint, "dataset": args.dataset, "split": args.split, **out}, indent=2))
    return 0


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a checkpoint", formatter_class=_Help,
                       description="Sample a continuation of a prompt from a trained checkpoint.",
                       epilog='example:\n  pillm generate --checkpoint runs/first --prompt "the game was" --seed 1')
    p.add_argument("--checkpoint", required=True, help="run directory or its checkpoint/")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=_int_at_least(1), default=40, metavar="N", help="(default: 40)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T",
                   help="sampling temperature; 0 picks the most likely token (default: 0.8)")
    p.add_argument("--top-k", type=_int_at_least(1), default=40, metavar="K",
                   help="sample among the K most likely tokens (default: 40)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    _common(p, cmd_generate)


def cmd_generate(args) -> int:
    from .run import load, sample_texts
    from .train import resolve_device

    if args.temperature < 0:
        raise ValueError(f"--temperature {args.temperature} is not allowed; use a value >= 0")
    model, tokenizer = load(args.checkpoint, device=str(resolve_device(args.device)))
    if not tokenizer.encode(args.prompt, add_eos=False):
        raise ValueError("--prompt is empty after tokenization; give at least one word")
    (sample,) = sample_texts(model, tokenizer, [args.prompt], [args.seed], tokens=args.max_new_tokens,
                             temperature=args.temperature, top_k=args.top_k)
    print(f"{args.prompt} {sample['text']}".strip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pillm", description="PIL-LM: Transformer language models whose feed-forward layers "
                     "are solved in closed form.", formatter_class=_Help,
                     epilog="run `pillm COMMAND --help` for a command's flags, defaults and an example")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also PILLM_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # name → its parser
    _train_parser(sub)
    _evaluate_parser(sub)
    _generate_parser(sub)
    from . import bench, experiments
    from .report import add_subcommands as _paper_subcommands  # `pillm paper`, `pillm arxiv`

    bench.add_arguments(sub.add_parser("bench", help="performance benchmarks; writes results/bench/<device>.json"))
    experiments.add_arguments(sub.add_parser("experiments", help="execute the experiment notebooks that are missing "
                                             "or stale (papermill); results/<profile>/ with provenance"))
    parser.commands["bench"].set_defaults(handler=bench.main)
    parser.commands["experiments"].set_defaults(handler=experiments.main)
    _paper_subcommands(sub)
    return parser


def _one_line(err: BaseException) -> str:
    """The message of an expected failure, as one line that says what to do."""
    from .data import DataError, DataNotFoundError

    text = str(err)
    if isinstance(err, DataNotFoundError):
        missing = re.search(r"Data file ('[^']+') not found", text)
        return (f"dataset file {missing.group(1) if missing else ''} not found; set PILLM_DATA_DIR to a folder "
                "that holds it, or put the dataset folders into the repository's data/ folder (README: Data)")
    if isinstance(err, DataError) and text.startswith("Checksum mismatch"):
        return (text.splitlines()[0].rstrip(":") + ": the file is corrupt or another version; replace it with "
                "the original or remove it (README: Data)")
    return " ".join(text.split()) or type(err).__name__


def _expected_failures() -> dict:
    """Exception type → exit status of the failures a user can cause and mend; anything else is a bug
    and keeps its traceback."""
    from .data import DataError
    from .run import CheckpointError, RunExistsError
    from .train import TrainingDiverged

    return {RunExistsError: 2, CheckpointError: 1, DataError: 1, FileNotFoundError: 1, TrainingDiverged: 1,
            ValueError: 2}  # the first match counts: CheckpointError is a ValueError


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: temporaries removed, nothing half-written


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        _check_train_args(parser.commands["train"], args)
    debug = getattr(args, "debug", False) or os.environ.get("PILLM_DEBUG", "") not in ("", "0")
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        if debug:
            raise
        where = f"; nothing written to {args.out}" if args.command == "train" else ""
        bar = "" if getattr(args, "quiet", True) else "\n"  # end the progress bar's line first
        print(f"{bar}pillm {args.command}: interrupted{where}", file=sys.stderr)
        return 130
    except tuple(_expected_failures()) as err:
        if debug:
            raise
        status = next(s for t, s in _expected_failures().items() if isinstance(err, t))
        print(f"pillm {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return status
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
