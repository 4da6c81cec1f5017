"""Built-in model and device specs, loaded from the YAML files beside this module."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from sim.catalog.specs import DTYPE_BYTES, DeviceSpec, ModelSpec
from sim.errors import UserError, unknown_name

__all__ = [
    "DTYPE_BYTES",
    "DeviceSpec",
    "ModelSpec",
    "devices",
    "get_device",
    "get_model",
    "models",
]

_HERE = Path(__file__).parent


def _load(filename: str, cls: type) -> dict:
    raw = yaml.safe_load((_HERE / filename).read_text())
    out = {}
    for name, fields in raw.items():
        if name in out:
            raise UserError(f"{filename}: duplicate entry '{name}'")
        out[name] = cls(name=name, **fields)
    return out


@cache
def models() -> dict[str, ModelSpec]:
    """All built-in models by name."""
    return _load("models.yaml", ModelSpec)


@cache
def devices() -> dict[str, DeviceSpec]:
    """All built-in devices by name."""
    return _load("devices.yaml", DeviceSpec)


def get_model(name: str, where: str = "") -> ModelSpec:
    """A built-in model by name; an unknown name lists the known ones."""
    try:
        return models()[name]
    except KeyError:
        raise unknown_name("model", name, models(), where) from None


def get_device(name: str, where: str = "") -> DeviceSpec:
    """A built-in device by name; an unknown name lists the known ones."""
    try:
        return devices()[name]
    except KeyError:
        raise unknown_name("device", name, devices(), where) from None
