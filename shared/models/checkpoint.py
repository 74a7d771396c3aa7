"""Model checkpoints without pickle: ``<prefix>.safetensors`` + ``<prefix>.json``.

The JSON file describes the model (format, kind, full config) so that
:func:`load_model` rebuilds it from the files alone; the safetensors file holds only
tensors, so loading never executes code from disk. Tensors shared between modules
(the two towers' embedding table) are stored once.

::

    {"format": "recsys-model/1", "kind": "dcn", "config": {...RankerConfig...}}
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from torch import nn

from shared.bundle import atomic_path
from shared.config import StrictConfig
from shared.errors import BundleError
from shared.models.rankers import DCNv2, DeepFM, RankerConfig
from shared.models.towers import ItemTower, TowerConfig, TwoTower, UserTower

__all__ = ["FORMAT", "MODELS", "checkpoint_paths", "load_model", "save_model"]

FORMAT = "recsys-model/1"

# kind -> (model class, config class); the kind is each class's ``kind`` attribute.
MODELS: dict[str, tuple[type[nn.Module], type[StrictConfig]]] = {
    cls.kind: (cls, cfg)
    for cls, cfg in (
        (DeepFM, RankerConfig),
        (DCNv2, RankerConfig),
        (TwoTower, TowerConfig),
        (UserTower, TowerConfig),
        (ItemTower, TowerConfig),
    )
}


def checkpoint_paths(path_prefix: str | Path) -> tuple[Path, Path]:
    """``(<prefix>.safetensors, <prefix>.json)``; a dot in the prefix is kept."""
    prefix = Path(path_prefix)
    return prefix.with_name(prefix.name + ".safetensors"), prefix.with_name(prefix.name + ".json")


def save_model(
    model: nn.Module, config: StrictConfig, path_prefix: str | Path
) -> tuple[Path, Path]:
    """Write the model's weights and description; each file is replaced atomically.

    Args:
        model (nn.Module): a model of :data:`MODELS` (a ranker, a tower, both towers).
        config (StrictConfig): the config the model was built from.
        path_prefix (str | Path): where to write, without extension.

    Returns:
        tuple[Path, Path]: the weights file and the description file.

    Raises:
        ValueError: an unknown model class, or a config that is not the model's.
    """
    kind = getattr(type(model), "kind", None)
    if kind not in MODELS or type(model) is not MODELS[kind][0]:
        raise ValueError(f"cannot save a {type(model).__name__}; known kinds: {sorted(MODELS)}")
    if config != getattr(model, "config", None):
        raise ValueError(
            f"the config given is not the one this {type(model).__name__} was built from"
        )
    weights, meta = checkpoint_paths(path_prefix)
    weights.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights) as tmp:
        safetensors.torch.save_model(model, str(tmp), metadata={"format": FORMAT, "kind": kind})
    description = {"format": FORMAT, "kind": kind, "config": config.model_dump(mode="json")}
    with atomic_path(meta) as tmp:
        tmp.write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    return weights, meta


def load_model(path_prefix: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild a model from ``<prefix>.json`` and fill it from ``<prefix>.safetensors``.

    Args:
        path_prefix (str | Path): what :func:`save_model` was given.
        device (str): where to put the weights.

    Returns:
        nn.Module: the model, in eval mode, with ``.config`` set.

    Raises:
        BundleError: a missing or unreadable file, an unknown format or kind, an
            invalid config, weights that do not fit the config or are not all finite.
    """
    weights, meta = checkpoint_paths(path_prefix)
    for path in (meta, weights):
        if not path.is_file():
            raise BundleError(f"{path}: model file not found", reason="missing")
    try:
        description = json.loads(meta.read_text())
        fmt, kind, data = description["format"], description["kind"], description["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{meta}: not a model description ({e!r})", reason="corrupt") from None
    if fmt != FORMAT:
        raise BundleError(f"{meta}: format {fmt!r}, expected {FORMAT!r}")
    if kind not in MODELS:
        raise BundleError(f"{meta}: unknown model kind {kind!r}; known: {sorted(MODELS)}")
    model_cls, config_cls = MODELS[kind]
    try:
        config = config_cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise BundleError(f"{meta}: invalid {kind} config: {key}: {first['msg']}") from None
    model = model_cls(config)
    try:
        safetensors.torch.load_model(model, str(weights), strict=True, device=device)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise BundleError(
            f"{weights}: weights do not fit the {kind} config in {meta.name}: {e}",
            reason="corrupt",
        ) from None
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise BundleError(f"{weights}: non-finite values in {name}", reason="non_finite")
    return model.to(device).eval()
