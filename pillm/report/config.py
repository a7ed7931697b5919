"""Paths, the experiments the paper reads, display orders, tolerances and titles."""

from __future__ import annotations

import string
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "paper"
TEMPLATES = PAPER / "templates"

#: Experiments the paper uses (registry keys of :mod:`pillm.experiments`).
PAPER_EXPERIMENTS = ("benchmark", "lambada", "ablation_bipil", "ablation_lambda", "ablation_expansion",
                     "ablation_fusion", "training_strategy", "tinystories", "complexity", "training_curves",
                     "gap", "ngram", "tuning", "teacher", "adaptation", "protocol", "first_layer",
                     "lambda_path", "pure_attention")
#: Columns of summary.csv that are outcomes, not parameters (never grouping keys).
OUTPUT_COLUMNS = ("valid_ppl", "test_ppl", "test_acc", "valid_acc", "train_s", "pil_s", "total_s",
                  "optimizer_steps", "params_embedding", "params_attention", "params_norm",
                  "params_ffn_trainable", "params_ffn_solved", "params_ffn_frozen_random", "params_head_solved",
                  "params_total", "max_cond", "any_fallback", "acc", "word_ppl", "oov_rate", "wall_s", "n_features",
                  "lambada_acc", "lambada_word_ppl", "lambada_oov_rate", "concurrent_runs",
                  # adaptation: measured per run (the pretrained model differs per seed)
                  "wiki_test_ppl", "adapt_s", "trained_params", "before_new_valid_ppl", "before_new_test_ppl",
                  "before_wiki_test_ppl",
                  # first_layer: the checkpoint's own perplexities, per seed
                  "before_valid_ppl", "before_test_ppl",
                  # lambda_path: the λ the checkpoint was solved with (per run)
                  "before_lam")
NOT_KEYS = ("seed", "name", "experiment")
LOWER_BETTER = {"valid_ppl", "test_ppl", "word_ppl", "total_s", "train_s", "pil_s"}
HIGHER_BETTER = {"test_acc", "valid_acc", "acc"}

#: first_layer's projection kinds, controls first (pillm.firstlayer.KINDS; not imported: it needs torch)
PROJECTION_ORDER = ("same", "random", "landmarks", "whitened", "pca", "autoencoder", "mixed")
METHOD_ORDER = ("baseline", "attn_only", "lora", "rf_adamw", "pil_pure", "pil_then_attn", "attn_then_pil",
                "alternating")
PIL_METHODS = ("pil_pure", "pil_then_attn", "attn_then_pil", "alternating")
HYBRID_METHODS = ("pil_then_attn", "attn_then_pil", "alternating")
METHOD_TEX = {"baseline": "Baseline (MLP FFN)", "attn_only": "Attention only", "lora": "LoRA FFN",
              "rf_adamw": "RF + AdamW readout", "pil_pure": "Pure PIL", "pil_then_attn": r"PIL$\rightarrow$attention",
              "attn_then_pil": r"attention$\rightarrow$PIL", "alternating": "Alternating"}
METHOD_PLAIN = {"baseline": "Baseline (MLP)", "attn_only": "Attention only", "lora": "LoRA FFN",
                "rf_adamw": "RF + AdamW", "pil_pure": "Pure PIL", "pil_then_attn": "PIL→attn",
                "attn_then_pil": "attn→PIL", "alternating": "Alternating"}
DATASET_TEX = {"wikitext2": "WikiText-2", "ptb": "PTB", "tinystories": "TinyStories", "lambada": "LAMBADA"}
DATASET_PREFERENCE = ("wikitext2", "ptb", "tinystories")
SIZE_ORDER = ("tiny", "small", "medium", "large")
TARGET_TEX = {"local": "local", "global": "global", "next_embedding": "next-embedding", "teacher": "teacher",
              "zero": "zero"}

#: Wording rules (used by :func:`verdict`): within ``COMPETITIVE_TOL`` of the reference counts as
#: "competitive"; within ``PAR_TOL`` as "on par"; ablation differences below ``SIMILAR_TOL`` are
#: called negligible.
COMPETITIVE_TOL = 0.05
PAR_TOL = 0.005
SIMILAR_TOL = 0.01
#: Issue 7's goal for the best hybrid: test perplexity at most this multiple of the baseline's.
GAP_GOAL = 1.05
#: Letters that name the n-th item of a list in macro names (``TeacherFitAPPL``, ``EtaTopBSolves``).
_TAGS = string.ascii_uppercase
#: The complexity fit locates the accumulation/solve crossover only when it explains the timings.
FIT_MIN_R2 = 0.9
#: LAMBADA accuracies below this are called low for every method.
LAMBADA_LOW = 0.05

FIGURES = ("curves", "lambda", "expansion", "complexity", "bench", "kappa", "contribution", "sizes")
TABLE_TITLES = {
    "ngram": "Kneser--Ney $n$-gram baseline",
    "benchmark": "Main results", "lambada": "LAMBADA", "ablation_bipil": "Bi-PIL versus a single projection",
    "ablation_lambda": r"Sensitivity to the relative ridge $\lambda$", "ablation_expansion": "Random-feature width",
    "ablation_fusion": "Fusion of the two Bi-PIL projections", "training_strategy": "Targets and order of the phases",
    "tinystories": "TinyStories", "tuning": "Learning rate and dropout chosen on validation",
    "tuned": "Every method at its own chosen setting",
    "gap": "Closing the gap: every variant of the gap experiment",
    "gap_changes": "One option at a time",
    "teacher": "Trained FFNs refitted by random features",
    "adaptation": "Adaptation to a new domain",
    "first_layer": "Data-dependent first layers, re-solved in closed form",
    "lambda_path": r"Ridge $\lambda$ chosen per layer on validation",
    "pure_attention": "Fixed attention for pure PIL",
    "protocol": "Test perplexity with sliding windows",
    "complexity_fit": "Fit of the measured time of the closed-form phase",
    "models": "Model configurations", "datasets": "Corpora and token counts",
    "hparams": "Training hyper-parameters of the main benchmark", "hardware": "Hardware and provenance"}
FIGURE_SOURCE = {"curves": "training_curves", "lambda": "ablation_lambda", "expansion": "ablation_expansion",
                 "complexity": "complexity", "bench": "bench", "kappa": "benchmark", "contribution": "benchmark",
                 "sizes": "benchmark"}
FIGURE_TITLES = {"bench": "Gram accumulation rate and solve time on the GPU",
                 "curves": "Training curves", "lambda": r"Sensitivity to $\lambda$ and $\kappa$",
                 "expansion": "Random-feature width", "complexity": "Scaling of the closed-form phase",
                 "kappa": r"Condition number $\kappa$ per layer", "contribution": "What the FFN layers contribute",
                 "sizes": "Test perplexity against model size"}


class ReportError(RuntimeError):
    """The paper could not be built; the message says why."""
