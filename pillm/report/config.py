"""Paths, display names and orders, and the error the paper build raises."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "paper"
TEMPLATES = PAPER / "templates"

#: Experiments the paper reads (registry keys of :mod:`pillm.experiments`); results/bench is read as well.
PAPER_EXPERIMENTS = ("benchmark", "gap", "teacher", "first_layer", "training_strategy", "training_curves",
                     "ablation_bipil", "ablation_lambda", "ablation_expansion", "ablation_fusion", "lambada",
                     "ngram", "tuning", "tinystories", "adaptation", "complexity", "protocol", "lambda_path",
                     "pure_attention")

#: first_layer's projection kinds, controls first (pillm.studies.firstlayer.KINDS; not imported: it needs torch)
PROJECTION_ORDER = ("same", "random", "landmarks", "whitened", "pca", "autoencoder", "mixed")
METHOD_ORDER = ("baseline", "attn_only", "lora", "rf_adamw", "pil_pure", "pil_then_attn", "attn_then_pil",
                "alternating")
METHOD_TEX = {"baseline": "Baseline (MLP FFN)", "attn_only": "Attention only", "lora": "LoRA FFN",
              "rf_adamw": "RF + AdamW readout", "pil_pure": "Pure PIL", "pil_then_attn": r"PIL$\rightarrow$attention",
              "attn_then_pil": r"attention$\rightarrow$PIL", "alternating": "Alternating"}
#: The variants of the gap experiment the text names as best (lowest mean validation perplexity among its
#: hybrids, and among its pure-PIL variants); the claim ``best-hybrid-selected`` checks them.
BEST_HYBRID = "attn_then_pil+global+iter4"
BEST_PURE = "pil_pure+ppmi"
#: Display names of the training curves' variants: methods, and the best hybrid with and without a subsampled Gram.
VARIANT_TEX = METHOD_TEX | {BEST_HYBRID: "best hybrid", f"{BEST_HYBRID}+sub200k": "best hybrid, subsampled Gram"}
#: The training curves' per-run summary (time-to-quality runs, each alone on the GPU).
CURVES = "training_curves/summary.csv"
#: The benchmarks the text quotes (``pillm bench``; medians over repeats where a file has several).
BENCH = "bench/nvidia-h100-80gb-hbm3.json"
BENCH_2GPU = "bench/nvidia-h200-2gpu.json"


class ReportError(RuntimeError):
    """The paper could not be built; the message says why."""
