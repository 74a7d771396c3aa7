"""Typed configs: one small model per component, unknown keys are an error."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import ConfigError

__all__ = ["StrictConfig", "build", "load_yaml"]

C = TypeVar("C", bound="StrictConfig")


class StrictConfig(BaseModel):
    """Base of every component config: validated, immutable, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def build(cls: type[C], data: dict[str, Any] | None, where: str) -> C:
    """Build ``cls`` from plain data; errors name the key and where it came from."""
    try:
        return cls.model_validate(data or {})
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ConfigError(f"{where}: {key}: {first['msg']}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data
