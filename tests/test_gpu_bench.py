"""The GPU benchmark's code path, run on the CPU with the tiny base's configs: every case is
measured, LoRA trains adapters only (fewer FLOPs than the full fine-tune), cached latents skip
the VAE, and a CPU-only machine is refused by default rather than measured wrongly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments.bench import gpu

TINY = Path(gpu.REPO) / "ymn" / "assets" / "tiny-base"


@pytest.fixture(scope="module")
def result() -> dict:
    return gpu.run(quick=True, config_dir=TINY, resolutions=(64,), batch=1, device="cpu")


def test_every_case_is_measured(result: dict) -> None:
    cases = {(r["mode"], r["cached_latents"]) for r in result["figures"]}
    assert cases == {("full", False), ("full", True), ("lora", False), ("lora", True)}
    assert all(r["images_per_s"] > 0 and r["tflop_per_step"] > 0 for r in result["figures"])
    assert result["setup"]["config"] == "ymn/assets/tiny-base"


def test_lora_and_cached_latents_count_fewer_flops(result: dict) -> None:
    flops = {(r["mode"], r["cached_latents"]): r["tflop_per_step"] for r in result["figures"]}
    assert flops["lora", True] < flops["full", True]  # no weight grads for frozen layers
    assert flops["full", True] < flops["full", False]  # no VAE encode


def test_peak_table_and_refusal_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu.peak_bf16("NVIDIA H200") == 989e12
    assert gpu.peak_bf16("Some Future Chip") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        gpu.run(quick=True)
