"""The UNet-width benchmark (experiments/bench/unet_width.py) runs and reports both widths."""

from experiments.bench import unet_width


def test_unet_width_benchmark_reports_both_widths_side_by_side():
    payload = unet_width.run(quick=True)
    assert set(payload["figures"]) == {"train_c32", "train_c64", "sample_c32", "sample_c64"}
    assert all(len(arm["repeats"]) == 3 for arm in payload["figures"].values())
    assert all(ratio > 0 for ratio in payload["ratio"].values())
    params = payload["parameters_millions"]
    assert 3.5 < params["unet_c64"] / params["unet_c32"] < 4.5  # twice the width: ~4x weights
