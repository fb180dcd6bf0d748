"""Objects from config nodes: Hydra's `instantiate`, with mistakes reported as one `ConfigError` line.

A node's `_target_` names the class (or function) to call with the node's other keys. Where the target is a
dataclass, its fields are the node's schema: the keys are checked against it as an OmegaConf structured config
first (an unknown key, a value of the wrong type), so a mistake names the key instead of failing inside the call.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from dpo_lightning.errors import ConfigError, DataError


@functools.cache
def _structured(schema: type) -> DictConfig:
    """The init fields of the dataclass `schema` as an OmegaConf structured config; a field whose type OmegaConf
    cannot check (a tensor, an objective) is typed `Any` there (its class still checks it when built)."""
    hints = typing.get_type_hints(schema)
    specs = []
    for f in dataclasses.fields(schema):
        if not f.init:
            continue
        kind = hints[f.name] if _checkable(hints[f.name]) else Any
        if f.default_factory is not dataclasses.MISSING:
            specs.append((f.name, kind, dataclasses.field(default_factory=f.default_factory)))
        else:
            default = "???" if f.default is dataclasses.MISSING else f.default
            specs.append((f.name, kind, dataclasses.field(default=default)))
    return OmegaConf.structured(dataclasses.make_dataclass(schema.__name__, specs))


def _checkable(kind: Any) -> bool:
    """Whether OmegaConf can check values of type `kind`."""
    try:
        OmegaConf.structured(dataclasses.make_dataclass("Probe", [("value", kind, dataclasses.field(default="???"))]))
    except (OmegaConfBaseException, TypeError, ValueError):  # a type OmegaConf does not support
        return False
    return True


def check_fields(schema: type, values: Mapping[str, Any], key: str) -> None:
    """Check `values` (a node's keys, `_target_` aside) against the dataclass `schema`'s init fields and types; a
    mistake is a ConfigError naming `<key>.<field>`."""
    values = {k: v for k, v in values.items() if k not in ("_target_", "_convert_", "_partial_", "_recursive_")}
    try:
        OmegaConf.merge(_structured(schema), values)
    except (ConfigKeyError, ValidationError) as error:
        field = f"{key}.{error.full_key}" if error.full_key else key
        fields = ", ".join(f.name for f in dataclasses.fields(schema) if f.init)
        problem = str(error.msg).splitlines()[0]
        if isinstance(error, ConfigKeyError):
            problem = f"is not a key of {schema.__name__} (its keys: {fields})"
        raise ConfigError(field, problem) from None


def build(node: DictConfig | Mapping[str, Any], key: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate(node, **kwargs)`, the node's fields checked first when its target is a dataclass
    (`check_fields`); a ConfigError or DataError raised by the target comes out as itself, one line (instantiate
    wraps every error in a multi-line InstantiationException). `key`: where the node sits in the config."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    if "_target_" not in values:
        raise ConfigError(key, "has no _target_ (the class to build)")
    try:
        target = get_object(values["_target_"])
    except (ImportError, AttributeError, ValueError):  # what Hydra raises for a name it cannot import
        raise ConfigError(f"{key}._target_", f"cannot import {values['_target_']!r}") from None
    if dataclasses.is_dataclass(target):
        check_fields(target, {k: v for k, v in values.items() if k not in kwargs}, key)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, (ConfigError, DataError)):
            raise error.__cause__ from None
        raise


def settings(schema: type, node: DictConfig | Mapping[str, Any], key: str) -> Any:
    """The dataclass `schema` built from a config node without `_target_` (e.g. `task.tokenize`), its keys
    checked first (`check_fields`); the dataclass's own checks raise one-line ConfigErrors."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    check_fields(schema, values, key)
    return schema(**values)
