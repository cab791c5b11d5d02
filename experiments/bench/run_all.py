"""`make bench` = `python -m experiments.bench.run_all [--quick] [--only NAME ...] [--out DIR]`.

Runs every benchmark in its own process (a crash or a leak in one cannot skew another), writes
`<out>/<name>.json` per benchmark and `<out>/SUMMARY.md`, which lists every benchmark with a JSON
in `<out>` (an `--only` run replaces its own rows and keeps the others, each with its commit).
Full runs write into experiments/bench/ (committed); `--quick` is a smoke run with few repeats,
written to /tmp/ymn-bench-quick unless --out is given.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from experiments.bench.common import BENCH_DIR, NO_GPU, REPO, machine, write_result

CPU_BENCHMARKS = ("train_step", "data_stream", "latent_cache", "scale", "cost_model", "fast_path",
                  "probes", "probe_sampling", "stage2_autocast", "unet_width",
                  "ema_update")  # fmt: skip
GPU_BENCHMARKS = ("gpu",)  # SD 1.5 on a CUDA device; run by default only where one is present
BENCHMARKS = CPU_BENCHMARKS + GPU_BENCHMARKS
QUICK_DIR = Path("/tmp/ymn-bench-quick")


def run_one(name: str, quick: bool, out: Path) -> Path:
    """Import and run one benchmark in this process; write its JSON."""
    module = importlib.import_module(f"experiments.bench.{name}")
    start = time.perf_counter()
    payload = module.run(quick=quick)
    payload["wall_s"] = time.perf_counter() - start
    payload["quick"] = quick
    payload["command"] = (
        "make bench" if not quick else "python -m experiments.bench.run_all --quick"
    )
    return write_result(name, payload, out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _short_commit(commit: str) -> str:
    return commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")


def summary(out: Path, failures: dict[str, str]) -> str:
    """SUMMARY.md text from the JSON files in `out` (every benchmark that has one or failed)."""
    names = [n for n in BENCHMARKS if n in failures or (out / f"{n}.json").is_file()]
    recorded = [out / f"{n}.json" for n in names if n not in failures]
    info = json.loads(recorded[0].read_text())["machine"] if recorded else machine()
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores (torch threads {info['torch_threads']}); "
        f"GPU: {info['gpu']}.",
        f"torch {info['torch']}, lightning {info['lightning']}, diffusers {info['diffusers']}, "
        f"Python {info['python']}; the commit each benchmark ran at is in its row.",
        "Every ratio is measured side by side in the same run (interleaved steps or repeats), "
        "figures are medians. Reproduce with `make bench` "
        "(`python -m experiments.bench.run_all`; `--quick` for a smoke run).",
        "",
        "| benchmark | ratio | value | target | met | commit |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        path = out / f"{name}.json"
        if name in failures or not path.is_file():
            lines.append(f"| {name} | failed | {failures.get(name, 'no JSON')[:120]} | | | |")
            continue
        data = json.loads(path.read_text())
        commit = _short_commit(data["machine"]["git_commit"])
        for i, (label, value) in enumerate(data.get("ratio", {}).items()):
            first = i == 0
            met, target = (_fmt(data.get("met")), data.get("target", "")) if first else ("", "")
            lines.append(
                f"| {name if first else ''} | {label} | {_fmt(value)} | {target} | {met} "
                f"| {commit if first else ''} |"
            )
    lines += ["", f"JSON per benchmark beside this file ({', '.join(n + '.json' for n in names)})."]
    if info["gpu"] == NO_GPU:
        lines.append("No CUDA device found: CPU figures only.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks (each in a subprocess) and write SUMMARY.md."""
    p = argparse.ArgumentParser(prog="run_all", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    p.add_argument("--only", nargs="*", choices=BENCHMARKS, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--one", choices=BENCHMARKS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = args.out or (QUICK_DIR if args.quick else BENCH_DIR)
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(run_one(args.one, args.quick, out))
        return 0
    names = list(args.only or (BENCHMARKS if torch.cuda.is_available() else CPU_BENCHMARKS))
    failures = {}
    for name in names:
        print(f"== {name}", flush=True)
        cmd = [sys.executable, "-m", "experiments.bench.run_all", "--one", name, "--out", str(out)]
        result = subprocess.run(cmd + (["--quick"] if args.quick else []), cwd=REPO,
                                capture_output=True, text=True)  # fmt: skip
        if result.returncode != 0:
            failures[name] = result.stderr.strip().splitlines()[-1] if result.stderr else "failed"
            print(result.stderr[-3000:], file=sys.stderr)
        else:
            print(result.stdout.strip().splitlines()[-1])
    text = summary(out, failures)
    (out / "SUMMARY.md").write_text(text, encoding="utf-8")
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
