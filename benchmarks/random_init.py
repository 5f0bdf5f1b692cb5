"""A model folder with random weights from another folder's config and tokenizer.

Throughput does not depend on the weights, so a GPU machine that cannot receive a model's
weights (no hub, a small transfer limit) can still be load-tested on the exact
architecture: carry config.json and the tokenizer files, then

    python benchmarks/random_init.py SRC_DIR DST_DIR [--layers N --hidden H ...]

Options scale the architecture up (``--hidden 2048 --layers 24`` etc.) for a larger model
of the same family. Never use such a folder for quality figures.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "chat_template.jinja", "generation_config.json",
)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("src", type=Path, help="Folder with config.json and tokenizer files.")
    ap.add_argument("dst", type=Path, help="Folder to write.")
    ap.add_argument("--layers", type=int, help="num_hidden_layers")
    ap.add_argument("--hidden", type=int, help="hidden_size (intermediate scales with it)")
    ap.add_argument("--heads", type=int, help="num_attention_heads (= key/value heads)")
    ap.add_argument("--intermediate", type=int, help="intermediate_size (default: scaled)")
    args = ap.parse_args()

    config = AutoConfig.from_pretrained(args.src)
    if args.hidden:
        ratio = config.intermediate_size / config.hidden_size
        config.hidden_size, config.intermediate_size = args.hidden, int(args.hidden * ratio)
    if args.layers:
        config.num_hidden_layers = args.layers
    if args.heads:
        config.num_attention_heads = args.heads
        if hasattr(config, "num_key_value_heads"):
            config.num_key_value_heads = args.heads
    if args.intermediate:
        config.intermediate_size = args.intermediate
    torch.manual_seed(0)
    is_decoder = bool(getattr(config, "is_decoder", False)) or "ForCausalLM" in str(
        config.architectures
    )
    cls = AutoModelForCausalLM if is_decoder else AutoModelForSequenceClassification
    if not is_decoder:
        config.num_labels = 1  # a reward head, so load_reward_model takes the folder as is
    model = cls.from_config(config)
    args.dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.dst)
    for name in TOKENIZER_FILES:
        if (args.src / name).is_file():
            shutil.copy2(args.src / name, args.dst / name)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.dst}: {type(model).__name__}, {n / 1e6:.0f}M parameters (random weights)")


if __name__ == "__main__":
    main()
