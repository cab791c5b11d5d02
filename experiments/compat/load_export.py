"""Runs inside the compat venv (no ymn there): load an export, report what the loaders got.

python load_export.py EXPORT_DIR REQUEST_JSON OUT_JSON

REQUEST_JSON: {"captions": [...], "extra_captions": [...], "added_tokens_dir": DIR or null}.
Each part the pipeline loaded is compared bit for bit with the export's own safetensors files.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import diffusers
import safetensors
import tokenizers
import torch
import transformers
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from transformers import CLIPTokenizer, CLIPTokenizerFast

PARTS = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
}


def compare(module: torch.nn.Module, path: Path) -> dict:
    """Keys and values of the loaded module against the file it should have been loaded from."""
    loaded, saved = module.state_dict(), load_file(str(path))
    mismatched = [k for k in saved if k in loaded and not torch.equal(loaded[k], saved[k])]
    return {
        "n_saved": len(saved),
        "n_loaded": len(loaded),
        "missing_from_file": sorted(set(loaded) - set(saved))[:10],
        "not_loaded": sorted(set(saved) - set(loaded))[:10],
        "n_bit_identical": len(saved) - len(mismatched) - len(set(saved) - set(loaded)),
        "mismatched": mismatched[:10],
        "dtypes": sorted({str(v.dtype) for v in loaded.values()}),
    }


def token_ids(folder: Path, captions: list[str]) -> dict:
    """Ids from each tokenizer class (padded to 77), or the error it raised."""
    out = {}
    for cls in (CLIPTokenizer, CLIPTokenizerFast):
        try:
            tokenizer = cls.from_pretrained(folder, local_files_only=True)
            ids = tokenizer(captions, padding="max_length", truncation=True).input_ids
            out[cls.__name__] = {"len": len(tokenizer), "ids": ids}
        except Exception as error:  # report, the parent decides
            out[cls.__name__] = {"error": f"{type(error).__name__}: {error}"}
    return out


def main(export_dir: Path, request: dict) -> dict:
    log_stream = io.StringIO()
    handler = logging.StreamHandler(log_stream)
    logging.getLogger("transformers").addHandler(handler)
    logging.getLogger("diffusers").addHandler(handler)
    pipe = StableDiffusionPipeline.from_pretrained(export_dir, local_files_only=True)
    captions = request["captions"]
    with torch.no_grad():
        ids = pipe.tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt")
        hidden = pipe.text_encoder(ids.input_ids)[0]
    result = {
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "diffusers": diffusers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
        },
        "pipeline_tokenizer_class": type(pipe.tokenizer).__name__,
        "parts": {
            name: compare(getattr(pipe, name), export_dir / rel) for name, rel in PARTS.items()
        },
        "text_encoder_hidden": hidden.tolist(),
        "tokenizer": token_ids(export_dir / "tokenizer", captions),
        "tokenizer_extra": token_ids(export_dir / "tokenizer", request["extra_captions"]),
        "loader_log": [line for line in log_stream.getvalue().splitlines() if line][:20],
    }
    if request.get("added_tokens_dir"):
        result["added_tokens"] = token_ids(Path(request["added_tokens_dir"]), captions)
    return result


if __name__ == "__main__":
    export_dir, request_path, out_path = map(Path, sys.argv[1:4])
    report = main(export_dir, json.loads(request_path.read_text()))
    out_path.write_text(json.dumps(report))
