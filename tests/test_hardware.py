"""Precision from the hardware: bf16 autocast only where the device computes bf16 natively."""

import json
import os
import subprocess
import sys

import pytest
import torch

from nanogpt_core import hardware
from nanogpt_core.config import stage_config
from nanogpt_core.train import train

CPU = torch.device("cpu")
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}  # what an AVX2-only CPU offers torch


def test_on_and_off_are_obeyed_whatever_the_hardware(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: (False, "test"))
    assert hardware.use_bf16("on", CPU) and hardware.use_bf16(True, CPU)
    assert not hardware.use_bf16("off", CPU) and not hardware.use_bf16(False, CPU)


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_hardware_and_says_so_once(monkeypatch, capsys, native):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: (native, f"test says {native}"))
    monkeypatch.setattr(hardware, "_printed", set())
    assert hardware.use_bf16("auto", CPU) is native
    assert hardware.use_bf16("auto", CPU) is native
    out = capsys.readouterr().out.splitlines()
    assert out == [f"precision: {'bf16 autocast' if native else 'fp32'} (test says {native}; --bf16 on|off overrides)"]


def test_old_boolean_configs_still_load():
    assert stage_config("gpt2", "toy", bf16=True).train.bf16 == "on"
    assert stage_config("gpt2", "toy", bf16=False).train.bf16 == "off"
    with pytest.raises(ValueError, match="bf16"):
        stage_config("gpt2", "toy", bf16="maybe")


def _in_subprocess(code: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=300, check=True)
    return out.stdout


def test_an_avx2_only_cpu_is_told_apart():
    """With oneDNN capped at AVX2 (as on an AVX2-only CPU) bf16 is not native, whatever this CPU has."""
    code = "import json, torch; from nanogpt_core import hardware as h; print(json.dumps([h.cpu_features(), h.native_bf16(torch.device('cpu'))]))"
    features, (native, why) = json.loads(_in_subprocess(code, AVX2_ONLY))
    assert not native and "has no native bf16" in why
    assert not {"AVX512-BF16", "AMX"} & set(features)
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        features, (native, _) = json.loads(_in_subprocess(code, {}))
        assert native and {"AVX512-BF16", "AMX"} & set(features)


TINY = dict(n_layer=2, n_head=2, n_embd=64, seq_len=64, batch_size=4, eval_tokens=512, eval_every=0, steps=3)


@pytest.mark.parametrize("stage", ["compile", "muon", "packing"])
def test_stages_without_native_bf16_run_in_fp32(monkeypatch, stage):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: (False, "no native bf16 (test)"))
    asked = []
    real = hardware.autocast_for
    monkeypatch.setattr("nanogpt_core.train.autocast_for", lambda device, bf16: asked.append(bf16) or real(device, bf16))
    _, r = train(stage_config(stage, "toy", **TINY), progress=False)
    assert asked == [False] and r.precision == "fp32" and r.steps == 3


def test_the_cli_on_an_avx2_only_cpu_trains_in_fp32(tmp_path):
    """The real command, on a CPU that looks AVX2-only to torch: one line says fp32 and why."""
    out = subprocess.run(
        [sys.executable, "-m", "nanogpt_core", "train", "--stage", "packing", "--scale", "toy", "--steps", "2",
         "--n-layer", "1", "--n-embd", "64", "--n-head", "2", "--seq-len", "64", "--batch-size", "2",
         "--eval-tokens", "256", "--compile", "off", "--quiet", "--json", str(tmp_path / "r.json")],
        env={**os.environ, **AVX2_ONLY}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "precision: fp32 (this CPU (AVX2" in out.stdout and "has no native bf16" in out.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["precision"] == "fp32" and "AVX512-BF16" not in result["hardware"]
