"""The moving-average benchmark (experiments/bench/ema_update.py) times both update styles of
the same weights side by side and checks they agree."""

from experiments.bench import ema_update


def test_ema_update_benchmark_times_both_styles_and_they_agree():
    payload = ema_update.run(quick=True)
    tiny = payload["models"]["tiny"]
    assert set(tiny["figures"]) == set(ema_update.STYLES)
    assert all(len(arm["repeats"]) == 3 for arm in tiny["figures"].values())
    assert tiny["tensors"] > 100  # the per-tensor loop's overhead is what is measured
    assert 0 < tiny["max_abs_diff"] < 1e-4  # the weights drifted, and both averages followed
    assert payload["ratio"]["foreach / per_tensor, tiny UNet"] > 0
