"""The committed SAEs: they load, meet their targets, say which setting differs when code
and checkpoint disagree, each one's training replays as its recipe says, and retraining one
from scratch with the command a maintainer runs (`make retrain`) lands where the committed
one is."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from autograder.chapters import REPO_ROOT
from conftest import replay_differences
from mechlab import zoo
from mechlab.sparse_autoencoders import zoo as sae_zoo


@pytest.mark.parametrize("name", list(sae_zoo.SAE_ZOO))
def test_committed_sae_loads_and_meets_its_targets(name):
    meta = sae_zoo.info(name)
    assert not sae_zoo.missed_targets(name, meta["metrics"]), meta["metrics"]
    sae = sae_zoo.load(name)
    assert sae.W_dec.dtype == torch.float32 and sae.scale == meta["scale"] > 0
    assert sae.cfg.d_sae == sae_zoo.SAE_ZOO[name].config["d_sae"] and not sae.training
    if sae.cfg.architecture != "relu":
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae), atol=2e-3)


def test_the_sweeps_cover_every_architecture_and_width():
    assert {sae_zoo.SAE_ZOO[n].config["architecture"] for n in sae_zoo.FRONTIER} == {"relu", "topk", "jumprelu"}
    assert [sae_zoo.SAE_ZOO[n].config["d_sae"] for n in sae_zoo.WIDTHS] == [256, 512, 1024, 2048, 4096]


def test_a_config_mismatch_names_the_setting(monkeypatch):
    spec = sae_zoo.SAE_ZOO["topk_k8_w256"]
    monkeypatch.setitem(sae_zoo.SAE_ZOO, "topk_k8_w256",
                        dataclasses.replace(spec, config={**spec.config, "k": 16}))
    with pytest.raises(zoo.CheckpointMismatch, match="k: checkpoint 8, zoo 16"):
        sae_zoo.load("topk_k8_w256")


# How far a retrained SAE may land from the committed one (same seeds; other CPUs and
# thread counts round differently, and training amplifies that).
RETRAIN_MARGINS = {"explained_variance": 0.01, "ce_increase": 0.003, "dead_fraction": 0.03}


@pytest.mark.parametrize("name", list(sae_zoo.SAE_ZOO))
def test_a_replay_of_training_follows_the_committed_saes_history(name):
    """Its first 61 steps (41 for the 2000-step one), replayed: loss, MSE, L0 and dead share
    as recorded at steps 0, 30 and 60. 1-5 s each, after the 20 s of collecting the
    activations the SAEs of one hook share."""
    assert replay_differences(sae_zoo.train, sae_zoo.info, name) == {}


@pytest.mark.retrain
def test_retraining_from_scratch_reproduces_the_committed_sae(tmp_path):
    name = "topk_k8_w256"  # the quickest; every SAE trains with the same code
    proc = subprocess.run([sys.executable, "-m", "mechlab.sparse_autoencoders.zoo", "train", name, "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "targets: all met" in proc.stdout
    from safetensors import safe_open
    with safe_open(str(tmp_path / f"{name}.safetensors"), framework="pt") as f:
        retrained = json.loads(f.metadata()["metrics"])
    committed = sae_zoo.info(name)["metrics"]
    for key, margin in RETRAIN_MARGINS.items():
        assert abs(retrained[key] - committed[key]) <= margin, (key, retrained[key], committed[key])
