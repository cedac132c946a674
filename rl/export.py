"""Weights out of training: an HF model directory, from the live trainer or from any checkpoint.

Two kinds of output, both written into `<dir>.tmp` and renamed into place (a reader never sees half):
- an HF model directory (`write_hf_dir`): sharded safetensors (+ model.safetensors.index.json when
  more than one shard), config.json with the export's dtype, generation config, tokenizer files and
  chat template copied from the base model. What `vllm serve DIR` and transformers load; the final
  model of a run (<output_dir>/hf, in trainer.param_dtype) and `terminus model export`.
- engine weights (`write_weights_dir`): the safetensors only, in the engine's dtype. What the disk
  weight sync writes every step: vLLM's in-place `reload_weights` reads nothing else.

`export_checkpoint` turns a step checkpoint (torch DCP, rl/checkpoint.py) into an HF directory in one
process, without the trainer: the model tensors are read from the DCP files (the optimizer's are not),
the base model, dtype and tie of the embeddings come from the run's saved config.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from core.errors import UserError
from core.model import DEFAULT_MAX_SHARD_SIZE, resolve_model_path, save_hf_weights
from rl import checkpoint

WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth")
DTYPES = ("float32", "bfloat16", "float16")


class ExportError(UserError, ValueError):
    """A run directory, step or option `terminus model export` cannot export from."""


def shard_size(value: int | str) -> int:
    """A maximum shard size in bytes from an int, a string of digits, or "5GB" / "500MB" / "20KB"."""
    from huggingface_hub.serialization._base import parse_size_to_int
    text = str(value).strip()
    try:
        size = int(text) if text.isdigit() else parse_size_to_int(text)
    except ValueError:
        size = 0
    if size <= 0:
        raise ExportError(f"max shard size {value!r} is not a size: give bytes or a number with KB, MB, GB or TB (e.g. 5GB)")
    return size


def _check_options(dtype: str, max_shard_size: int | str) -> int:
    """Check an export's dtype and shard size (before any weights are read); returns the size in bytes."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return shard_size(max_shard_size)


def _atomically(out: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` on a fresh `<out>.tmp`, then replace `out` with it."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def write_weights_dir(state_dict: dict, out: str | os.PathLike, *, tie_word_embeddings: bool,
                      dtype: torch.dtype) -> Path:
    """The engine's disk weight sync: safetensors only, in the engine's dtype (vLLM would round to it)."""
    return _atomically(Path(out), lambda tmp: save_hf_weights(
        state_dict, tmp, tie_word_embeddings=tie_word_embeddings, dtype=dtype))


def write_hf_dir(state_dict: dict, base_model: str | os.PathLike, out: str | os.PathLike, *,
                 tie_word_embeddings: bool, dtype: str,
                 max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """A complete HF model directory: the weights in `dtype`, sharded, and every other file of the
    base model (config with its dtype set to the export's, generation config, tokenizer, chat template)."""
    max_bytes = _check_options(dtype, max_shard_size)
    base = Path(base_model)

    def write(tmp: Path) -> None:
        for f in base.iterdir():
            if f.is_file() and not f.name.endswith(WEIGHT_FILES) and not f.name.endswith(".index.json"):
                shutil.copy2(f, tmp / f.name)
        config = json.loads((tmp / "config.json").read_text())
        config.pop("torch_dtype", None)   # the older name of the key
        config["dtype"] = dtype           # what `vllm serve` and from_pretrained(dtype="auto") take
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_hf_weights(state_dict, tmp, tie_word_embeddings=tie_word_embeddings,
                        dtype=getattr(torch, dtype), max_shard_size=max_bytes)

    return _atomically(Path(out), write)


def checkpoint_model_state(ckpt: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model tensors of a DCP checkpoint (TrainerWorker.save), full and unsharded, in one process.

    The checkpoint's metadata gives every tensor's global shape and dtype; DCP reads only the keys
    asked for, so the optimizer's moments stay on disk."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    prefix = "model."
    model = {k[len(prefix):]: torch.empty(m.size, dtype=m.properties.dtype)
             for k, m in meta.items() if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
    if not model:
        raise ExportError(f"{ckpt} holds no model tensors: not a checkpoint of `terminus train`")
    with warnings.catch_warnings():   # one process, no process group: what no_dist asks for
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load({"model": model}, checkpoint_id=str(ckpt), no_dist=True)
    return model


def find_checkpoint(run_dir: Path, step: Optional[int]) -> Path:
    """The newest complete checkpoint of a run, or the one of optimizer step `step`."""
    found = checkpoint.complete_checkpoints(checkpoint.checkpoint_root(run_dir))
    names = ", ".join(p.name.removeprefix("step_").lstrip("0") or "0" for p in found) or "none"
    if not found:
        raise ExportError(f"{run_dir} has no complete checkpoint under checkpoints/ (found: {names}): "
                          f"give the output_dir of a `terminus train` run that saved one")
    if step is None:
        return found[-1]
    for p in found:
        if int(p.name.removeprefix("step_")) == step:
            return p
    raise ExportError(f"{run_dir} has no complete checkpoint of step {step}; its checkpoints are of steps {names}")


def export_checkpoint(run_dir: str | os.PathLike, *, step: Optional[int] = None, dtype: Optional[str] = None,
                      out: Optional[str | os.PathLike] = None,
                      max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """`terminus model export`: a checkpoint of a run (the newest by default) as an HF directory, in
    `dtype` (default: the run's trainer.param_dtype), at `out` (default <run_dir>/hf_step_N)."""
    from omegaconf import OmegaConf

    run = Path(run_dir)
    saved = run / "config.yaml"
    if not saved.is_file():
        raise ExportError(f"{saved} not found: give the output_dir of a `terminus train` run (it saves its config there)")
    cfg = OmegaConf.load(saved)
    dtype = dtype or cfg.trainer.param_dtype
    _check_options(dtype, max_shard_size)
    ckpt = find_checkpoint(run, step)
    base = resolve_model_path(cfg.model.path)
    tie = bool(json.loads((base / "config.json").read_text()).get("tie_word_embeddings", False))
    target = Path(out) if out else run / f"hf_{ckpt.name}"
    return write_hf_dir(checkpoint_model_state(ckpt), base, target, tie_word_embeddings=tie,
                        dtype=dtype, max_shard_size=max_shard_size)
