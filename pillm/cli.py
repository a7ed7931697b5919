"""Command line: ``pillm train``, ``pillm evaluate`` and the repository workflows.

    pillm train --method pil_then_attn --size small --dataset wikitext2 --epochs 10 --out runs/pil
    pillm evaluate --checkpoint runs/pil --dataset wikitext2 --split test
    torchrun --nproc_per_node=2 -m pillm train ...      # PIL statistics sharded + all-reduced, DDP
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .model import FUSIONS, PRESETS, PROJ_INITS
from .targets import TARGETS
from .train import EMBED_INITS, METHODS


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train and evaluate one model; writes OUT/result.json and OUT/checkpoint/")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--size", default="small", choices=tuple(PRESETS))
    p.add_argument("--dataset", default="wikitext2")
    p.add_argument("--tokenizer", default="auto", choices=("auto", "word", "bpe"))
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--max-train-tokens", type=int)
    p.add_argument("--max-eval-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    p.add_argument("--expansion", type=float, help="FFN hidden width / model width (per projection for Bi-PIL)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--single", dest="bipil", action="store_false", help="one random projection (PIL)")
    mode.add_argument("--bipil", dest="bipil", action="store_true", help="two fused projections (Bi-PIL, default)")
    p.set_defaults(bipil=True)
    p.add_argument("--fusion", choices=FUSIONS)
    p.add_argument("--proj-init", choices=PROJ_INITS, help="random projections, or landmarks from the layer's inputs")
    p.add_argument("--lam", type=float, help="ridge λ relative to mean diag(HᵀH)")
    p.add_argument("--target", choices=TARGETS)
    p.add_argument("--iterations", type=int)
    p.add_argument("--search-tokens", type=int, help="validation tokens for the step-size search")
    p.add_argument("--final-resolve", action="store_true", default=None)
    p.add_argument("--final-target", choices=TARGETS)
    p.add_argument("--solve-head", action="store_true", default=None, help="pil_pure: closed-form output head")
    p.add_argument("--embed-init", choices=EMBED_INITS, help="ppmi: closed-form token embeddings (SVD of PPMI)")
    p.add_argument("--teacher", help="checkpoint dir of a trained baseline (target=teacher)")
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--no-checkpoint", dest="save_checkpoint", action="store_false")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="output directory")


# Flags named like the ModelConfig / TrainConfig field they set.
MODEL_FLAGS = ("dropout", "expansion", "fusion", "proj_init")
TRAIN_FLAGS = ("epochs", "batch_size", "lr", "max_train_tokens", "max_eval_tokens", "seed", "device", "lam", "target",
               "iterations", "search_tokens", "final_resolve", "final_target", "solve_head", "compile", "embed_init")


def spec_from_args(args):
    """Build a RunSpec; only flags that were given override the defaults."""
    from .run import RunSpec

    pick = lambda names: {n: getattr(args, n) for n in names if getattr(args, n) is not None}  # noqa: E731
    return RunSpec(method=args.method, size=args.size, dataset=args.dataset, tokenizer=args.tokenizer,
                   bipil=args.bipil, model=pick(MODEL_FLAGS), train=pick(TRAIN_FLAGS), teacher=args.teacher,
                   save_checkpoint=args.save_checkpoint)


def cmd_train(args) -> int:
    from .run import execute

    _maybe_init_distributed()
    result, _ = execute(spec_from_args(args), out=args.out, progress=not args.quiet)
    keys = ("method", "dataset", "valid_ppl", "test_ppl", "test_acc", "train_s", "pil_s", "optimizer_steps")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
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


def cmd_evaluate(args) -> int:
    from .data import load_tokenized, lambada_examples
    from .evaluate import evaluate_stream, lambada
    from .run import load
    from .train import resolve_device

    device = resolve_device(args.device)
    model, tokenizer = load(args.checkpoint, device=str(device))
    if args.dataset == "lambada":
        kind = "openai_wikitext" if tokenizer.kind == "word" else "openai"
        out = lambada(model, tokenizer, lambada_examples(kind), progress=not args.quiet) | {"lambada_file": kind}
    else:
        corpus = load_tokenized(args.dataset, tokenizer.kind)
        if corpus.tokenizer.vocab_size != tokenizer.vocab_size:
            raise SystemExit(f"the checkpoint's tokenizer ({tokenizer.vocab_size} types) does not match "
                             f"{args.dataset}'s ({corpus.tokenizer.vocab_size}); evaluate on the training corpus")
        ids = getattr(corpus, args.split)
        out = evaluate_stream(model, ids, stride=args.stride, batch_size=args.batch_size, max_tokens=args.max_tokens,
                              progress=not args.quiet)
    print(json.dumps({"checkpoint": args.checkpoint, "dataset": args.dataset, "split": args.split, **out}, indent=2))
    return 0


def cmd_bench(args) -> int:
    from . import bench

    return bench.main(args)


def cmd_experiments(args) -> int:
    from . import experiments

    return experiments.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pillm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    p = sub.add_parser("evaluate", help="evaluate a checkpoint; prints JSON")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", default="wikitext2")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--stride", type=int, help="sliding-window stride (default: non-overlapping windows)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens of the split")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    from .bench import add_arguments as _bench_arguments

    _bench_arguments(sub.add_parser("bench", help="performance benchmarks; writes results/bench/<device>.json"))
    from .experiments import add_arguments as _experiments_arguments

    _experiments_arguments(sub.add_parser("experiments", help="execute the experiment notebooks that are missing "
                                          "or stale (papermill); results/<profile>/ with provenance"))
    from .report import add_subcommands as _paper_subcommands  # `pillm paper`, `pillm arxiv`

    _paper_subcommands(sub)
    args = parser.parse_args(argv)
    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "bench": cmd_bench,
                "experiments": cmd_experiments}.get(args.command, getattr(args, "handler", None))(args)
    except ValueError as e:  # configuration errors: one clear line, no traceback
        print(f"pillm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
