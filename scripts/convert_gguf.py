"""Convert a (quantized) GGUF causal LM into a plain Hugging Face folder that vLLM's
CPU build loads: config.json + model.safetensors (bf16) + tokenizer files with a
chat template.

Used by scripts/prepare-vllm.sh; needs torch, transformers, gguf and accelerate
(the vLLM venv has them). Nothing is fetched from a model hub.

    python scripts/convert_gguf.py MODEL.gguf OUT_DIR [--dtype bfloat16|float32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path, help="path of the .gguf file")
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    src_dir, gguf_name = str(args.gguf.parent), args.gguf.name

    # Dequantizes the GGUF tensors into a regular torch model.
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)

    # A fresh model from the config without the GGUF quantization_config, so the
    # saved folder is a plain, unquantized checkpoint vLLM accepts.
    config = AutoConfig.from_pretrained(src_dir, gguf_file=gguf_name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings may legitimately show up as a missing lm_head.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        print(f"state dict mismatch: missing={missing} unexpected={unexpected}", file=sys.stderr)
        return 1
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(dtype)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)

    # Sanity checks of what vLLM will read.
    saved = json.loads((args.out / "config.json").read_text())
    saved.pop("quantization_config", None)
    (args.out / "config.json").write_text(json.dumps(saved, indent=2) + "\n")
    if not (args.out / "tokenizer.json").exists():
        print("tokenizer.json missing from the output", file=sys.stderr)
        return 1
    has_template = (
        bool(getattr(tokenizer, "chat_template", None))
        or (args.out / "chat_template.jinja").exists()
    )
    if not has_template:
        print("the tokenizer has no chat template", file=sys.stderr)
        return 1

    # Quick smoke test: greedy continuation with the converted weights.
    check = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = check.generate(**ids, max_new_tokens=6, do_sample=False)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    print(
        f"[convert_gguf] {saved.get('architectures')} max_position_embeddings="
        f"{saved.get('max_position_embeddings')} dtype={args.dtype} -> {args.out}"
    )
    print(f"[convert_gguf] smoke test: {text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
