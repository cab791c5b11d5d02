"""Does a ymn export load in the ecosystem's pins? transformers 4.54.1 + diffusers 0.32.1.

python -m experiments.compat.transformers4 [--venv DIR]   # writes transformers4.json here

kohya sd-scripts and many diffusers tools pin these. The check builds a throw-away venv (torch
first: the CPU build, so pip never pulls a CUDA one; never torchvision), exports a tiny run with
`ymn-export` in ours, then loads `export/diffusers` there with StableDiffusionPipeline and the
tokenizer folder with CLIPTokenizer and CLIPTokenizerFast. Every weight must equal the export's
bit for bit and every token id ours; the text encoder's output is compared as well.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import diffusers
import torch
import transformers

from ymn.data.tokenizer import load_clip_tokenizer, save_tokenizer
from ymn.model.components import build_tiny
from ymn.remedies.control_tokens import CONTROL_TOKENS
from ymn.run_record import commit_label

HERE = Path(__file__).resolve().parent
PINS = ("transformers==4.54.1", "diffusers==0.32.1", "safetensors")
TORCH_PIN = "torch==2.13.0"
PARTS = ("unet", "vae", "text_encoder")
CAPTIONS = [  # the kind of captions ymn trains on: ASCII tags, control tokens, long ones
    "1person, AobaKokona, fhmd fvmd, mountain",
    "3people, KuraueHinata, YukimuraAoi, outdoors, Hello World!!",
    "",
    "a photo of hinata's backpack (smiling), 2girls,  double  spaces",
    "tag " * 90,
]
EXTRA_CAPTIONS = ["café naïve, 日本語の山"]  # reported, not required (see the JSON's note)


def build_venv(venv: Path) -> Path:
    """The venv's python, installing torch first and then the pins (kept for reruns)."""
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, TORCH_PIN], check=True)
    subprocess.run([*pip, *PINS], check=True)
    return python


def export_tiny_run(root: Path) -> Path:
    """A run directory (config + last.ckpt of a seeded tiny model) exported by `ymn-export`."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config_resolved.yaml").write_text(
        "model:\n  components:\n    _target_: ymn.model.components.build_tiny\n    seed: 0\n"
    )
    trained = build_tiny(7)  # other weights than the config's seed: a re-init cannot pass
    state = {f"{p}.{k}": v for p in PARTS for k, v in getattr(trained, p).state_dict().items()}
    torch.save({"state_dict": state}, run / "checkpoints" / "last.ckpt")
    ymn_export = Path(sys.executable).parent / "ymn-export"
    subprocess.run([str(ymn_export), str(run)], check=True)
    return run / "export" / "diffusers"


def ours(folder: Path) -> tuple[list[list[int]], list[list[int]], torch.Tensor]:
    """Token ids (main and extra captions) and text-encoder output in our pins."""
    from ymn.model.components import load_components

    components = load_components(pretrained=str(folder))
    tok = components.tokenizer
    ids = tok(CAPTIONS, padding="max_length", truncation=True, return_tensors="pt").input_ids
    extra = tok(EXTRA_CAPTIONS, padding="max_length", truncation=True).input_ids
    with torch.no_grad():
        hidden = components.text_encoder(ids)[0]
    return ids.tolist(), extra, hidden


def tokenizer_verdicts(theirs: dict, want: list[list[int]]) -> dict:
    return {
        name: {
            "loads": "error" not in got,
            "same_ids": got.get("ids") == want,
            "len": got.get("len"),
        }
        | ({"error": got["error"]} if "error" in got else {})
        for name, got in theirs.items()
    }


def summarise(report: dict, want: list, extra: list, added: list, hidden: torch.Tensor) -> dict:
    parts = {
        name: {
            **part,
            "bit_identical": part["n_bit_identical"] == part["n_saved"] == part["n_loaded"],
        }
        for name, part in report["parts"].items()
    }
    hidden_theirs = torch.tensor(report["text_encoder_hidden"])
    tokenizers = tokenizer_verdicts(report["tokenizer"], want)
    ok = all(p["bit_identical"] for p in parts.values()) and all(
        t["same_ids"] for t in tokenizers.values()
    )
    return {
        "ok": ok,
        "theirs": report["versions"],
        "ours": {"transformers": transformers.__version__, "diffusers": diffusers.__version__},
        "ymn_commit": commit_label(),
        "pipeline": {"tokenizer_class": report["pipeline_tokenizer_class"], "parts": parts},
        "text_encoder_output_max_abs_diff": float((hidden_theirs - hidden).abs().max()),
        "tokenizer": {"captions": CAPTIONS, **tokenizers},
        "tokenizer_non_ascii": {
            "captions": EXTRA_CAPTIONS,
            **tokenizer_verdicts(report["tokenizer_extra"], extra),
            "note": "not required: transformers 4.x's slow CLIPTokenizer without ftfy splits "
            "CJK characters with its BasicTokenizer; the fast one is the CLIP tokenizer",
        },
        "tokenizer_with_control_tokens": {
            "tokens": list(CONTROL_TOKENS),
            **tokenizer_verdicts(report["added_tokens"], added),
            "note": "not required: ymn's remedy_control_tokens arm adds these single-word "
            "tokens; 4.x's slow CLIPTokenizer (the class StableDiffusionPipeline loads, as "
            "model_index.json names it like the reference folders) misses them next to "
            "punctuation ('3people,') or in capitals, the fast one matches ours",
        },
        "loader_log": report["loader_log"],
    }


def control_token_folder(root: Path) -> tuple[Path, list[list[int]]]:
    """A tokenizer folder with ymn's control tokens added, and our ids for CAPTIONS."""
    from tokenizers import AddedToken

    tokenizer = load_clip_tokenizer()
    tokenizer.add_tokens([AddedToken(t, single_word=True, normalized=True) for t in CONTROL_TOKENS])
    save_tokenizer(tokenizer, root / "tokenizer-control")
    ids = tokenizer(CAPTIONS, padding="max_length", truncation=True).input_ids
    return root / "tokenizer-control", ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "ymn-compat-tf4")
    parser.add_argument("--out", type=Path, default=HERE / "transformers4.json")
    args = parser.parse_args(argv)
    python = build_venv(args.venv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = export_tiny_run(root)
        want, extra, hidden = ours(folder)
        added_dir, added = control_token_folder(root)
        request = {"captions": CAPTIONS, "extra_captions": EXTRA_CAPTIONS}
        (root / "request.json").write_text(
            json.dumps(request | {"added_tokens_dir": str(added_dir)})
        )
        loader = [str(python), str(HERE / "load_export.py"), str(folder)]
        subprocess.run([*loader, str(root / "request.json"), str(root / "theirs.json")], check=True)
        report = json.loads((root / "theirs.json").read_text())
    result = summarise(report, want, extra, added, hidden)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'OK' if result['ok'] else 'FAILED'}: {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
