"""Resumable training checkpoints without pickle.

A checkpoint folder holds two files:

``train_state.safetensors``
    The model ``state_dict`` (keys ``model.<name>``), the SGD momentum buffers
    (``optim.<param_index>.momentum_buffer``, index into the optimizer's parameter list) and the
    RNG states (``rng.cpu``, ``rng.cuda.<i>``). Its safetensors metadata embeds a copy of the
    training state and a sha256 over the tensor contents, so the file verifies itself.
``train_state.json``
    Human-readable training state: epoch, step within the epoch, global step, config, history,
    the partial-epoch accumulators, and ``safetensors_sha256`` of the tensor file.

Both are written atomically (temp file + fsync + rename): the tensor file first, the JSON last as
the commit point. Loading normally goes through the JSON and checks the tensor file's sha256.
If a run was killed after the tensor file was replaced but before the JSON was, the JSON's hash no
longer matches; the tensor file is then accepted on its own *only* if its embedded tensor hash
verifies and its embedded state is newer than the JSON's -- that state is exactly what the JSON
would have said. Anything else (unreadable JSON, missing or damaged tensor file, foreign format)
raises :class:`CheckpointError` telling the user to delete the folder or pass ``resume=False``;
nothing is ever silently retrained over.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .._atomic import write_bytes_atomic, write_text_atomic
from ..errors import ConfigError

__all__ = [
    "CheckpointError",
    "STATE_JSON",
    "STATE_TENSORS",
    "FORMAT",
    "VERSION",
    "save_train_state",
    "load_train_state",
    "apply_train_state",
    "checkpoint_exists",
    "clean_stale_temp_files",
    "rng_tensors",
    "restore_rng",
]

STATE_JSON = "train_state.json"
STATE_TENSORS = "train_state.safetensors"
FORMAT = "chanprune-train-state"
VERSION = 1
_META_STATE = "chanprune_train_state"
_META_TENSOR_SHA = "chanprune_tensor_sha256"
_FIX = "delete the folder or pass resume=False to start over"


class CheckpointError(ConfigError):
    """A training checkpoint is corrupt, incomplete or was written by a different run."""


# --------------------------------------------------------------------------------------- hashing

def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _read_safetensors_metadata(blob: bytes) -> dict[str, str]:
    if len(blob) < 8:
        raise ValueError("file shorter than a safetensors header")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError("truncated safetensors header")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("malformed safetensors metadata")
    return meta


# ------------------------------------------------------------------------------------------ RNG

def rng_tensors() -> dict[str, torch.Tensor]:
    """The current torch RNG states (CPU and every CUDA device) as uint8 tensors."""
    out = {"rng.cpu": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s.clone()
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Restore RNG states saved by :func:`rng_tensors` (CUDA states only where devices match)."""
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"].to(torch.uint8).cpu())
    cuda = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in tensors.items() if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([v.to(torch.uint8).cpu() for _, v in cuda])


# ----------------------------------------------------------------------------------------- save

def _optim_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def save_train_state(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     state: dict[str, Any]) -> Path:
    """Write the tensor file, then the JSON (the commit point). Returns the JSON path.

    ``state`` is the JSON-able training state (epoch, step, global_step, config, history, ...);
    ``format``, ``version`` and ``safetensors_sha256`` are filled in here. The current RNG
    states are stored alongside the weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        # clone(): detaches from the live model and breaks storage sharing, which safetensors refuses.
        tensors[f"model.{key}"] = value.detach().to("cpu").clone().contiguous()
    for i, p in enumerate(_optim_params(optimizer)):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"optim.{i}.momentum_buffer"] = buf.detach().to("cpu").clone().contiguous()
    tensors.update(rng_tensors())

    body = dict(state)
    body["format"] = FORMAT
    body["version"] = VERSION
    body.pop("safetensors_sha256", None)
    meta = {
        _META_STATE: json.dumps(body, sort_keys=True, allow_nan=True),
        _META_TENSOR_SHA: _tensor_digest(tensors),
    }
    blob = st_save(tensors, metadata=meta)
    write_bytes_atomic(directory / STATE_TENSORS, blob)
    body["safetensors_sha256"] = hashlib.sha256(blob).hexdigest()
    write_text_atomic(directory / STATE_JSON, json.dumps(body, indent=1, sort_keys=True, allow_nan=True) + "\n")
    return directory / STATE_JSON


# ----------------------------------------------------------------------------------------- load

def checkpoint_exists(directory: str | Path) -> bool:
    """True when either checkpoint file is present (complete or not)."""
    d = Path(directory)
    return (d / STATE_JSON).exists() or (d / STATE_TENSORS).exists()


def clean_stale_temp_files(directory: str | Path) -> None:
    """Remove temp files left by a write that was killed before its rename."""
    d = Path(directory)
    if not d.is_dir():
        return
    for name in (STATE_JSON, STATE_TENSORS):
        for tmp in d.glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass


def _self_verified(blob: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse a tensor file that carries its own state + tensor hash; raise ValueError if it does not verify."""
    meta = _read_safetensors_metadata(blob)
    if _META_STATE not in meta or _META_TENSOR_SHA not in meta:
        raise ValueError("no embedded training state")
    tensors = st_load(blob)
    if _tensor_digest(tensors) != meta[_META_TENSOR_SHA]:
        raise ValueError("tensor contents do not match their embedded sha256")
    state = json.loads(meta[_META_STATE])
    if state.get("format") != FORMAT:
        raise ValueError("not a chanprune training state")
    return state, tensors


def load_train_state(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """Read and verify a checkpoint. Returns ``(state, tensors)``, or ``None`` when the folder
    holds no checkpoint at all. Raises :class:`CheckpointError` for anything damaged."""
    d = Path(directory)
    jpath, tpath = d / STATE_JSON, d / STATE_TENSORS
    if not jpath.exists() and not tpath.exists():
        return None
    where = f"the checkpoint in {d}"

    if not tpath.exists():
        raise CheckpointError(f"{where} has {STATE_JSON} but no {STATE_TENSORS}; {_FIX}.")
    try:
        blob = tpath.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{where} cannot be read ({exc}); {_FIX}.") from exc

    state: dict[str, Any] | None = None
    json_problem = None
    if jpath.exists():
        try:
            state = json.loads(jpath.read_text(encoding="utf-8"))
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise ValueError("not a chanprune training state")
            if state.get("version") != VERSION:
                raise ValueError(f"unsupported version {state.get('version')!r}")
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            json_problem = f"{STATE_JSON} is unreadable ({exc})"
            state = None
    else:
        json_problem = f"{STATE_JSON} is missing"

    if state is not None and state.get("safetensors_sha256") == hashlib.sha256(blob).hexdigest():
        try:
            tensors = st_load(blob)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{where} has an unreadable {STATE_TENSORS} ({exc}); {_FIX}.") from exc
        return state, tensors

    if json_problem is not None and jpath.exists():
        # A JSON file that is there but cannot be parsed is damage, not an interrupted write
        # (it is replaced atomically), so do not guess.
        raise CheckpointError(f"{where} is corrupt: {json_problem}; {_FIX}.")

    # The JSON is missing or its hash does not match: maybe a run was killed between writing the
    # tensor file and committing the JSON. Accept the tensor file only if it verifies itself and
    # is newer than what the JSON committed.
    try:
        embedded, tensors = _self_verified(blob)
    except Exception as exc:
        problem = json_problem or f"{STATE_TENSORS} does not match the sha256 recorded in {STATE_JSON}"
        raise CheckpointError(f"{where} is corrupt: {problem} ({exc}); {_FIX}.") from exc
    if state is not None and int(embedded.get("global_step", -1)) < int(state.get("global_step", -1)):
        raise CheckpointError(
            f"{where} is corrupt: {STATE_TENSORS} is older than {STATE_JSON} (step "
            f"{embedded.get('global_step')} vs {state.get('global_step')}); {_FIX}.")
    embedded["safetensors_sha256"] = hashlib.sha256(blob).hexdigest()
    return embedded, tensors


def apply_train_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                      tensors: dict[str, torch.Tensor], *, directory: str | Path = "") -> None:
    """Copy saved weights (and momentum buffers) into a live model/optimizer.

    Raises :class:`CheckpointError` when keys or shapes differ from the model.
    """
    where = f"the checkpoint in {directory}" if directory else "the checkpoint"
    own = model.state_dict()
    saved = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing = sorted(set(own) - set(saved))
    extra = sorted(set(saved) - set(own))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise CheckpointError(f"{where} belongs to a different model ({detail}); {_FIX}.")
    for k, v in own.items():
        if tuple(saved[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{where} belongs to a different model ({k} has shape {tuple(saved[k].shape)}, "
                f"the model has {tuple(v.shape)}); {_FIX}.")
    model.load_state_dict(saved, strict=True)
    if optimizer is None:
        return
    params = _optim_params(optimizer)
    for key, buf in tensors.items():
        if not key.startswith("optim."):
            continue
        _, idx, name = key.split(".", 2)
        i = int(idx)
        if i >= len(params) or tuple(params[i].shape) != tuple(buf.shape):
            raise CheckpointError(f"{where} has optimizer state that does not fit the model ({key}); {_FIX}.")
        optimizer.state[params[i]][name] = buf.to(device=params[i].device, dtype=params[i].dtype).clone()
