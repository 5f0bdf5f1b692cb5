"""`ramo models prepare` on the real packaged weights (conversion takes ~30 s on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

torch = pytest.importorskip("torch", reason="the models extra is not installed")
transformers = pytest.importorskip("transformers", reason="the models extra is not installed")


def test_prepare_smollm2_gives_a_loadable_hf_folder(models_dir: Path) -> None:
    from ramo_stream.local_models import prepare, resolve

    path = models_dir / "smollm2-135m-instruct"
    assert resolve("smollm2-135m-instruct", models_dir) == str(path)
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config  # vLLM would look for GGUF tensors otherwise
    tok = transformers.AutoTokenizer.from_pretrained(path)
    lm = transformers.AutoModelForCausalLM.from_pretrained(path)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Name the capital of France."}],
        add_generation_prompt=True, return_dict=True, return_tensors="pt",
    )["input_ids"]  # fmt: skip
    with torch.no_grad():
        out = lm.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])  # real weights, not a random init
    # Preparing again is a no-op that returns the same folder.
    mtime = (path / "model.safetensors").stat().st_mtime
    assert prepare("smollm2-135m-instruct", models_dir) == path
    assert (path / "model.safetensors").stat().st_mtime == mtime


def test_prepare_minilm_encoder(models_dir: Path) -> None:
    path = models_dir / "all-minilm-l6-v2"
    tok = transformers.AutoTokenizer.from_pretrained(path)
    enc = transformers.AutoModel.from_pretrained(path)
    batch = tok(
        [
            "how do I store bleach safely",
            "how to keep bleach away from kids",
            "the history of jazz",
        ],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = enc(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb.shape == (3, 384)
    # a real sentence encoder puts the two bleach questions closer than bleach and jazz
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
