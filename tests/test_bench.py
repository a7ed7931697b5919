"""``pillm bench``: the quick CPU run writes a complete JSON; FLOP models; the PIL solve streams.

The quick run happens in a subprocess (the real command line).  It sets ``OMP_WAIT_POLICY=PASSIVE``:
with two OpenMP threads on a small, busy VM, MKL's ``eigvalsh`` of a 512×512 matrix was seen to
take ~7 s instead of ~20 ms (spinning threads), which would make timings meaningless.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pillm import bench
from pillm.data import TokenStream
from pillm.model import PILLM, config_for
from pillm.solver import RidgeAccumulator
from pillm.train import RunLog, TrainConfig, pil_phase

REPO = Path(__file__).resolve().parent.parent


def _walk_numbers(obj, path=""):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk_numbers(v, f"{path}[{i}]")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pillm", "bench", "--quick", "--device", "cpu", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, seconds, proc


def test_quick_bench_writes_complete_json(quick_run):
    out, seconds, proc = quick_run
    assert seconds < 60, f"pillm bench --quick took {seconds:.1f} s"
    files = sorted(p.name for p in out.iterdir())
    assert files == ["cpu-quick.json", "cpu-quick.pdf"], files
    r = json.loads((out / "cpu-quick.json").read_text())
    assert json.loads(proc.stdout)["json"].endswith("cpu-quick.json")
    for key in ("gram_rate_ratio", "gram_rate_ratio_unmasked", "pil_phase_over_baseline_epoch",
                "pil_phase_over_baseline_train", "baseline_mfu", "baseline_tokens_per_s"):
        assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    assert r["quick"] is True and r["environment"]["git_commit"] and r["environment"]["torch"] == torch.__version__
    assert "goals" not in r  # measurements, not verdicts
    # Raw figures behind every ratio, with their FLOP and byte counts.
    for row in r["gram"]["per_size"]:
        d, n, k = row["D"], row["N"], row["K"]
        assert row["flops_update"] == 2 * n * d * d + 2 * n * d * k
        for key in ("dense_mm", "update", "update_masked", "addmm_pair"):
            assert row[key]["seconds_median"] > 0 and row[key]["flops"] > 0 and row[key]["bytes"] > 0
    largest = max(r["gram"]["per_size"], key=lambda row: row["D"])
    assert r["gram_rate_ratio"] == largest["gram_rate_ratio"]
    for row in r["solve"]["per_size"]:
        assert row["auto"]["solver_used"] == "cholesky" and row["eigh"]["solver_used"] == "eigh"
        assert row["auto"]["seconds"] > 0 and row["eigh"]["seconds"] > 0
    tr = r["training"]
    assert tr["pil"]["seconds"] > 0 and tr["baseline"]["epoch_seconds_steady"] > 0
    assert tr["pil_phase_over_baseline_train"] == pytest.approx(tr["pil"]["seconds"] / tr["baseline"]["train_seconds"])
    assert tr["baseline"]["train_projected"] is True  # one epoch measured, 10 projected
    assert len(tr["pil"]["per_layer"]) == tr["pil"]["layers"]
    # Every number in the file is finite (non-finite ones would be strings).
    bad = [(p, v) for p, v in _walk_numbers(r) if not math.isfinite(v)]
    assert not bad, bad


def test_flop_models():
    assert bench.gram_cost(16384, 4096, 256)[0] == 2 * 16384 * 4096**2 + 2 * 16384 * 4096 * 256
    # read H, Y once; read + write G, C
    assert bench.gram_cost(10, 4, 2)[1] == 4 * (10 * 4 + 10 * 2 + 2 * (16 + 8))
    model = PILLM(config_for("tiny", vocab_size=100, ffn="mlp"))
    f = bench.baseline_flops_per_token(model)
    c = model.config
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert f["matmul_params"] == linear + 100 * c.n_embd  # + the tied head
    assert f["total"] == 6 * f["matmul_params"] + 12 * c.n_layer * c.n_embd * c.block_size
    pf = bench.pil_phase_flops(config_for("small", vocab_size=1000, ffn="bipil"), 1000, 100, 13)
    assert pf["features_D"] == 2 * 4 * 256
    assert pf["gram"] == 4 * 1000 * (2 * 2048**2 + 2 * 2048 * 512)


def test_slug():
    assert bench.device_slug(bench.device_name(torch.device("cpu"))) == "cpu"
    assert bench.device_slug("cpu", quick=True) == "cpu-quick"
    assert bench.device_slug("NVIDIA H200") == "nvidia-h200"


def test_distributed_mode_needs_torchrun(monkeypatch, capsys):
    from pillm.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["bench", "--distributed", "--quick", "--device", "cpu"]) == 2
    assert "torchrun" in capsys.readouterr().err


@pytest.fixture
def one_thread():
    """One intra-op thread (see the module docstring: MKL's eigensolvers stall with spinning threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.filterwarnings("ignore:.*edge of eta_grid:RuntimeWarning")  # random tokens: nothing to learn
def test_pil_solve_never_materialises_all_features(monkeypatch, one_thread):
    """Every ``update`` sees at most ``solve_batch_size × block_size`` rows; all rows are streamed."""
    seen: list[int] = []
    update = RidgeAccumulator.update

    def spy(self, H, Y, mask=None):
        seen.append(H.reshape(-1, H.shape[-1]).shape[0])
        return update(self, H, Y, mask)

    monkeypatch.setattr(RidgeAccumulator, "update", spy)
    torch.manual_seed(0)
    model = PILLM(config_for("tiny", vocab_size=50, block_size=16, dropout=0.0, ffn="bipil"))
    g = torch.Generator().manual_seed(0)
    train = TokenStream(torch.randint(50, (16 * 40 + 1,), generator=g))
    valid = TokenStream(torch.randint(50, (16 * 8 + 1,), generator=g))
    cfg = TrainConfig(method="pil_pure", solve_batch_size=6, search_tokens=64, eval_every_epoch=False)
    pil_phase(model, train, valid, cfg, RunLog(), progress=False)
    windows = train.windows(16)[0].shape[0]
    layers = model.config.n_layer
    assert max(seen) <= cfg.solve_batch_size * 16
    assert sum(seen) == layers * windows * 16  # the whole stream, once per layer
    assert len(seen) == layers * math.ceil(windows / cfg.solve_batch_size)


@pytest.mark.filterwarnings("ignore:.*edge of eta_grid:RuntimeWarning")  # a toy language: any step fits
def test_hybrid_part_times_the_gap_variant_as_the_experiment_builds_it(tmp_path, monkeypatch, one_thread):
    """``--parts train,hybrid`` trains a variant of the gap experiment's paper profile by the real procedure,
    with its options passed through to the configs, and divides by the baseline's whole run of the same part."""
    from pillm.experiments.registry import load_registry

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    variant = "attn_then_pil+global+iter2"
    options = load_registry()["gap"]["parameters"]["paper"]["variants"][variant]
    assert bench.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--no-figure",
                       "--parts", "train,hybrid", "--hybrid", variant]) == 0
    r = json.loads((tmp_path / "cpu-quick.json").read_text())
    h, base = r["hybrid"], r["training"]["baseline"]
    assert r["complete"] and "gram" not in r and h["variant"] == variant and h["options"] == options
    tc = h["train_config"]
    assert (tc["method"], tc["target"], tc["iterations"]) == ("attn_then_pil", "global", 2)
    assert tc["eval_every_epoch"] is False and tc["epochs"] == base["train_epochs"] == h["epochs"]
    assert h["model_config"]["ffn"] == "bipil" and h["optimizer_steps"] > 0 and h["pil_seconds"] > 0
    assert h["seconds"] >= h["adamw_seconds"] + h["pil_seconds"] > 0
    assert h["baseline_train_seconds"] == base["train_seconds"] and h["baseline_train_projected"] is True
    assert r["hybrid_over_baseline_train"] == pytest.approx(h["seconds"] / base["train_seconds"])


def test_hybrid_part_says_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="use --parts train,hybrid"):
        bench.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--parts", "hybrid"])
    with pytest.raises(ValueError, match="not a variant of the gap experiment.*attn_then_pil\\+global"):
        bench.gap_variant("attn_then_pil+nothing")
    with pytest.raises(ValueError, match="needs --hybrid NAME"):
        bench.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--parts", "train,hybrid"])
    assert bench.gap_variant("attn_then_pil")[0] == {"method": "attn_then_pil"}


def test_combine_takes_the_median_of_complete_repeats(tmp_path):
    from pillm.bench import combine

    paths = []
    for i, ratio in enumerate([2.0, 1.0, 4.0]):
        rec = {"complete": True, "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "quick": True,
               "compute_version": 2,
               "hybrid_over_baseline_train": ratio, "hybrid": {"seconds": ratio}}
        paths.append(tmp_path / f"nvidia-h100-80gb-hbm3-quick-r{i}.json")
        paths[-1].write_text(json.dumps(rec))
    written = combine(paths, tmp_path)  # a GPU's repeats, combined on a machine without one
    assert written.name == "nvidia-h100-80gb-hbm3-quick.json"
    out = json.loads(written.read_text())
    assert out["hybrid_over_baseline_train"] == 2.0
    assert (out["hybrid_over_baseline_train_min"], out["hybrid_over_baseline_train_max"]) == (1.0, 4.0)
    assert [r["hybrid_over_baseline_train"] for r in out["repeats"]] == [2.0, 1.0, 4.0]
    paths[0].write_text(json.dumps({"complete": False}))
    with pytest.raises(ValueError, match="not a complete benchmark"):
        combine(paths, tmp_path)
