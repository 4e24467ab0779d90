"""Load a recipe config, apply command-line overrides, and build its components.

A generated recipe starts with::

    config_path, overrides = parse_recipe_args(sys.argv[1:])
    cfg = apply_overrides(load_config(config_path), overrides)

and later builds each component with ``instantiate(cfg.optimizer, params=...)``. The conventions are
torchtune's: a node with a ``_component_`` key names a callable by dotted path, its other keys are the
keyword arguments, and overrides read ``key.sub=value`` (set), ``+key.sub=value`` (add) and
``~key.sub`` (delete).

Unlike torchtune, an override of a key that does not exist is an error with a did-you-mean, never a
silently added key, and every failure is a one-line `ConfigError` that names the file or key path.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

__all__ = [
    "COMPONENT_KEY",
    "LocateError",
    "apply_overrides",
    "binding_problems",
    "child_path",
    "did_you_mean",
    "expand_home",
    "first_line",
    "has_key",
    "instantiate",
    "known_names",
    "load_config",
    "locate",
    "node_path",
    "parse_recipe_args",
    "resolve_component",
    "resolve_config_paths",
]

COMPONENT_KEY = "_component_"
"""The key whose value names the callable a config node builds."""

_USAGE = (
    "usage: python RECIPE.py --config CONFIG.yaml [key.sub=value | +key.sub=value | ~key.sub ...]"
)


# --------------------------------------------------------------------------------------------------
# Loading


def expand_home(path: str | Path) -> Path:
    """`path` with a leading `~` or `~user` expanded; a `~name` that names no user stays as
    written (it is then an ordinary file name, and `Path.expanduser` would raise)."""
    path = Path(path)
    with contextlib.suppress(RuntimeError):
        path = path.expanduser()
    return path


def load_config(path: str | Path) -> DictConfig:
    """Read a YAML config file into a `DictConfig`, its relative paths resolved against its folder.

    Paths in a config are relative to the config file (see `resolve_config_paths`), so a recipe
    runs the same from any working directory; overrides applied later stay relative to the working
    directory, as a shell user expects. Raises `ConfigError` for a missing file, bad YAML (with
    ``file:line:column``), or a document whose top level is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a config file" if path.is_dir() else "file not found"
        raise ConfigError(f"{path}: {what}")
    try:
        cfg = OmegaConf.load(path)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: bad YAML: {e.problem or e.context}") from e
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: bad YAML: {first_line(e)}") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the file ({e.strerror or e})") from e
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not a list")
    resolve_config_paths(cfg, path.parent)
    return cfg


def resolve_config_paths(cfg: DictConfig, base_dir: str | Path) -> DictConfig:
    """Rewrite, in place, each relative path value of `cfg` as that path under `base_dir`.

    A value is a path when its key says so: ``path``, ``source``, ``*_path``, ``*_file`` and
    ``*_dir`` (``output_dir``, ``log_dir``, ...), at any depth and in lists; ``path_or_name``
    unless it names a built-in model; ``base_model`` when that path exists (it may also be a hub
    name). Absolute and ``~`` paths, URLs, interpolations (``${checkpointer.output_dir}/x``) and
    ``???`` are left alone. The result stays relative when `base_dir` is (``generated`` +
    ``../data/x.jsonl`` -> ``data/x.jsonl``), so messages show short paths. Returns `cfg`.
    """
    _resolve_paths(cfg, Path(base_dir))
    return cfg


def _resolve_paths(node: DictConfig | ListConfig, base_dir: Path, key: str = "") -> None:
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for child_key, _ in list(items):
        value = node._get_node(child_key)
        name = child_key if isinstance(child_key, str) else key  # list items take the list's key
        if isinstance(value, (DictConfig, ListConfig)):
            if not value._is_interpolation() and not value._is_missing() and not value._is_none():
                _resolve_paths(value, base_dir, name if isinstance(value, ListConfig) else "")
            continue
        raw = value._value()
        if isinstance(raw, str) and _is_relative_path_value(name, raw, base_dir):
            node[child_key] = _under(base_dir, raw, keep_dot=name == "path_or_name")


_PATH_SUFFIXES = ("_path", "_file", "_dir")


def _is_relative_path_value(key: str, value: str, base_dir: Path) -> bool:
    """Whether `value` of `key` is a relative path to resolve against the config's folder."""
    if not value or "${" in value or value == "???" or "://" in value:
        return False
    if value.startswith("~") or Path(value).is_absolute():
        return False
    if key in ("path", "source") or key.endswith(_PATH_SUFFIXES):
        return True
    if key == "path_or_name":
        from tunegen.runtime.models import BUILTIN_MODELS

        return value not in BUILTIN_MODELS
    return key == "base_model" and (base_dir / value).exists()


def _under(base_dir: Path, value: str, *, keep_dot: bool) -> str:
    """`value` joined to `base_dir`, with `.` and `..` folded; ``./x`` stays explicit for a
    `path_or_name` (a bare ``tiny`` would name the built-in model, not the dir)."""
    joined = Path(os.path.normpath(os.path.join(base_dir, value))).as_posix()
    if keep_dot and "/" not in joined and not joined.startswith("."):
        joined = f"./{joined}"
    return joined


# --------------------------------------------------------------------------------------------------
# Overrides


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Return a copy of `cfg` with command-line overrides applied, in order.

    ``key.sub=value`` sets an existing key (the value is parsed as YAML like OmegaConf's dotlist, and
    may itself contain ``=``); ``+key.sub=value`` adds a key that does not exist yet (creating missing
    parent mappings); ``~key.sub`` deletes a key. Setting a key that does not exist without ``+`` is
    a `ConfigError` with a did-you-mean, so a typo never silently adds a key.
    """
    if isinstance(overrides, str):
        raise TypeError("apply_overrides takes a sequence of override strings, not one string")
    cfg = copy.deepcopy(cfg)
    for override in overrides:
        try:
            # The struct flag forbids new keys; `+key=...` is exactly the way to add one.
            with open_dict(cfg):
                _apply_override(cfg, override)
        except OmegaConfBaseException as e:  # e.g. a read-only or typed node refusing the value
            raise ConfigError(f"override {override!r}: {first_line(e)}") from e
    return cfg


def _apply_override(cfg: DictConfig, override: str) -> None:
    """Apply one override string to `cfg` in place."""
    where = f"override {override!r}"
    if not isinstance(override, str) or not override:
        raise ConfigError(f"{where}: expected 'key.sub=value', '+key.sub=value' or '~key.sub'")
    if override.startswith("~"):
        if "=" in override:
            raise ConfigError(f"{where}: a deletion takes no value; write '~key.sub'")
        keys = _parse_key(override[1:], where)
        parent, last = _existing_parent(cfg, keys, where)
        _check_exists(parent, keys, last, where, cfg)
        del parent[last]
        return
    add = override.startswith("+")
    key_text, sep, value_text = override[1 if add else 0 :].partition("=")
    if not sep:
        raise ConfigError(f"{where}: expected 'key.sub=value' (or '~key.sub' to delete a key)")
    keys = _parse_key(key_text, where)
    value = _parse_value(value_text, where)
    if add:
        _add(cfg, keys, value, where)
    else:
        parent, last = _existing_parent(cfg, keys, where)
        _check_exists(parent, keys, last, where, cfg)
        parent[last] = value


def _parse_key(text: str, where: str) -> list[str | int]:
    """Split ``a.b.0`` into ``["a", "b", 0]``; each part is an identifier-like name or a list index."""
    if not text:
        raise ConfigError(f"{where}: the key is empty")
    keys: list[str | int] = []
    for part in text.split("."):
        if part.isdigit():
            keys.append(int(part))
        elif part.replace("-", "_").isidentifier() and part.isascii():
            keys.append(part)
        else:
            raise ConfigError(f"{where}: {text!r} is not a dotted key like 'training.lr'")
    return keys


def _parse_value(text: str, where: str) -> Any:
    """Parse an override value the way OmegaConf's dotlist does (YAML: ``1e-3``, ``true``, ``[1,2]``)."""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]))["v"]
    except yaml.MarkedYAMLError as e:
        raise ConfigError(f"{where}: the value is not valid YAML ({e.problem or e.context})") from e
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise ConfigError(f"{where}: the value is not valid YAML ({first_line(e)})") from e


def _existing_parent(
    cfg: DictConfig, keys: list[str | int], where: str
) -> tuple[DictConfig | ListConfig, str | int]:
    """Walk to the container holding the last key; every key on the way must already exist."""
    node: Any = cfg
    for depth, key in enumerate(keys[:-1]):
        _check_exists(node, keys[: depth + 1], key, where, cfg)
        node = node._get_node(key)
        if not isinstance(node, (DictConfig, ListConfig)) or node._is_interpolation():
            path = _join(keys[: depth + 1])
            raise ConfigError(f"{where}: {path!r} is a value, not a section with keys")
    return node, keys[-1]


def _check_exists(
    node: Any, keys: list[str | int], key: str | int, where: str, root: DictConfig | None = None
) -> None:
    """Raise a did-you-mean `ConfigError` unless `key` exists in `node` (``???`` values count)."""
    if isinstance(node, ListConfig):
        if isinstance(key, int) and key < len(node):
            return
        raise ConfigError(
            f"{where}: no item {_join(keys)!r} in the config (the list has {len(node)})"
        )
    if has_key(node, key):
        return
    prefix = _join(keys[:-1])
    names = [str(k) for k in node]
    known = known_names(root, prefix, str(key)) if root is not None else {}
    hint = did_you_mean(str(key), names, prefix=prefix, known=known)
    if not hint:
        hint = f"; to add a new key write '+{_join(keys)}=...'"
    raise ConfigError(f"{where}: no key {_join(keys)!r} in the config{hint}")


def _add(cfg: DictConfig, keys: list[str | int], value: Any, where: str) -> None:
    """Add a new key, creating missing parent mappings; the key itself must not exist yet."""
    node: Any = cfg
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, ListConfig) or isinstance(key, int):
            _check_exists(node, keys[: depth + 1], key, where)
        elif not has_key(node, key):
            node[key] = {}
        node = node._get_node(key)
        if not isinstance(node, (DictConfig, ListConfig)) or node._is_interpolation():
            path = _join(keys[: depth + 1])
            raise ConfigError(f"{where}: {path!r} is a value, not a section with keys")
    last = keys[-1]
    if isinstance(node, ListConfig):
        raise ConfigError(f"{where}: '+' adds mapping keys; to set a list item drop the '+'")
    if has_key(node, last):
        raise ConfigError(f"{where}: key {_join(keys)!r} already exists; drop the '+' to set it")
    node[last] = value


def has_key(node: DictConfig, key: Any) -> bool:
    """Whether `node` has `key`, also when its value is ``???`` (``key in node`` is False then)."""
    return key in node.keys()  # noqa: SIM118 -- see the docstring


def _join(keys: Sequence[str | int]) -> str:
    return ".".join(str(k) for k in keys)


def did_you_mean(
    word: str,
    candidates: Sequence[str],
    *,
    prefix: str = "",
    cutoff: float = 0.6,
    known: Mapping[str, str] | None = None,
) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest candidate, or ``""`` when none is close.

    `prefix` (a dotted key path) is prepended to the suggestion so it reads as a full key path.
    `known` maps names users bring from other tools (``learning_rate``) to the full key path they
    mean here; it is consulted first. This is the one did-you-mean of tunegen: spec keys, config
    keys, overrides, component arguments and choices all use it.
    """
    if known and word in known:
        return f"; did you mean {known[word]!r}?"
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    if not matches:
        return ""
    suggestion = f"{prefix}.{matches[0]}" if prefix else matches[0]
    return f"; did you mean {suggestion!r}?"


def known_names(cfg: DictConfig, prefix: str, word: str) -> dict[str, str]:
    """What `word` under `prefix` means in `cfg` when it is a spec key path or a name from another
    tool: ``{"learning_rate": "training.lr"}``, ``{"seed": "environment.seed"}`` (for
    ``training.seed``), or ``{}``. Only keys `cfg` holds a value at are named, so the suggestion
    can be set."""
    from tunegen.compiler.schema import CONFIG_KEYS, FOREIGN_NAMES

    if child_path(prefix, word) in CONFIG_KEYS:
        return {}  # a config key of its own: not another key's spec name
    spec_key = FOREIGN_NAMES.get(word) or child_path(prefix, word)
    for config_key, from_spec in CONFIG_KEYS.items():
        if from_spec == spec_key and _holds_value(cfg, config_key):
            return {word: config_key}
    return {}


def _holds_value(cfg: DictConfig, key_path: str) -> bool:
    """Whether `key_path` exists in `cfg` and holds a value rather than an interpolation."""
    node: Any = cfg
    for part in key_path.split("."):
        if not isinstance(node, DictConfig) or not has_key(node, part):
            return False
        node = node._get_node(part)
    return not node._is_interpolation()


# --------------------------------------------------------------------------------------------------
# Recipe command line


def parse_recipe_args(argv: Sequence[str]) -> tuple[Path, list[str]]:
    """Split a recipe's arguments (``sys.argv[1:]``) into the config path and the overrides.

    Accepts ``--config F`` or ``--config=F`` anywhere; every other argument is an override, checked
    later by `apply_overrides`.
    """
    config: str | None = None
    overrides: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" or arg.startswith("--config="):
            if config is not None:
                raise ConfigError(f"--config is given twice; {_USAGE}")
            if arg == "--config":
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise ConfigError(f"--config needs a file name; {_USAGE}")
                i += 1
                config = args[i]
            else:
                config = arg.partition("=")[2]
            if not config:
                raise ConfigError(f"--config needs a file name; {_USAGE}")
        elif arg.startswith("--"):
            raise ConfigError(f"unknown option {arg!r}; {_USAGE}")
        else:
            overrides.append(arg)
        i += 1
    if config is None:
        raise ConfigError(f"missing --config; {_USAGE}")
    return Path(config), overrides


# --------------------------------------------------------------------------------------------------
# Components


class LocateError(Exception):
    """Why a dotted path could not be imported (the message lacks the key path)."""


def resolve_component(dotted: str, *, key_path: str = "") -> Any:
    """Import the object a ``_component_`` names, e.g. ``torch.optim.AdamW`` or ``my_module.MyLoss``.

    The path is a module path followed by an attribute chain; the current working directory is
    importable, so user components can live next to their config. Only dotted identifiers are
    accepted. `key_path` is the config node holding the ``_component_`` (or the ``_component_`` key
    itself) and prefixes the error: ``optimizer._component_: cannot import 'torch.optim.AdamWW'
    (module 'torch.optim' has no attribute 'AdamWW')``.
    """
    try:
        return locate(dotted)
    except LocateError as e:
        raise ConfigError(f"{_component_key(key_path)}: {e}") from e.__cause__


def _component_key(key_path: str) -> str:
    if not key_path:
        return COMPONENT_KEY
    if key_path == COMPONENT_KEY or key_path.endswith("." + COMPONENT_KEY):
        return key_path
    return f"{key_path}.{COMPONENT_KEY}"


def locate(dotted: Any) -> Any:
    """Import `dotted`, raising `LocateError` with a one-line reason on failure."""
    if not isinstance(dotted, str):
        raise LocateError(f"expected a dotted name like 'torch.optim.AdamW', got {dotted!r}")
    parts = dotted.split(".")
    if not all(p.isidentifier() and p.isascii() for p in parts):
        raise LocateError(f"{dotted!r} is not a dotted name like 'torch.optim.AdamW'")
    obj: Any = _import(parts[0], dotted)
    for i, part in enumerate(parts[1:], start=1):
        here = ".".join(parts[:i])
        try:
            obj = getattr(obj, part)
            continue
        except AttributeError:
            pass
        except Exception as e:  # a module-level __getattr__ that fails while importing lazily
            raise LocateError(f"cannot import {dotted!r} ({first_line(e)})") from e
        if not isinstance(obj, ModuleType):
            raise LocateError(f"cannot import {dotted!r} ({here!r} has no attribute {part!r})")
        obj = _import(
            f"{here}.{part}", dotted, missing=f"module {here!r} has no attribute {part!r}"
        )
    if isinstance(obj, ModuleType):
        raise LocateError(f"{dotted!r} is a module; name a class or function inside it")
    return obj


def _import(module: str, dotted: str, *, missing: str | None = None) -> ModuleType:
    """Import `module` with the working directory importable; report a failure as `LocateError`."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        # Appended, not prepended: a user file must not shadow an installed package of the same
        # name. It stays, so a user module can import its siblings later, at call time.
        sys.path.append(cwd)
    try:
        if module not in sys.modules:
            importlib.invalidate_caches()  # a module written since start-up must be found
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            reason = missing or f"no module named {module!r}"
        else:
            reason = f"importing {module!r} failed: {type(e).__name__}: {first_line(e)}"
        raise LocateError(f"cannot import {dotted!r} ({reason})") from e
    except Exception as e:  # any failure inside the user's module is reported, not a crash
        reason = f"importing {module!r} failed: {type(e).__name__}: {first_line(e)}"
        raise LocateError(f"cannot import {dotted!r} ({reason})") from e


def instantiate(node: DictConfig | Mapping, *args: Any, **kwargs: Any) -> Any:
    """Build the object a config node describes: call its ``_component_`` with its other keys.

    Interpolations are resolved first. Nested nodes with a ``_component_`` (also inside lists) are
    built first, depth first; other nested mappings and lists are passed as plain Python containers.
    Positional `args` come first and explicit `kwargs` override keys of the node. A bad argument or a
    `TypeError`/`ValueError` raised by the call becomes a `ConfigError` naming the key path.
    """
    key_path = node_path(node) if isinstance(node, DictConfig) else ""
    if isinstance(node, DictConfig):
        try:
            data = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as e:
            where = getattr(e, "full_key", None) or key_path or "config"
            raise ConfigError(f"{where}: {first_line(e)}") from e
    elif isinstance(node, Mapping):
        data = dict(node)
    else:
        raise ConfigError(
            f"{key_path or 'config'}: expected a mapping with a '{COMPONENT_KEY}' key"
        )
    if not isinstance(data, dict) or COMPONENT_KEY not in data:
        raise ConfigError(f"{key_path or 'config'}: no '{COMPONENT_KEY}' key to instantiate")
    return _build(data, key_path, args, kwargs)


def _build(
    data: dict, key_path: str, args: tuple = (), extra: Mapping[str, Any] | None = None
) -> Any:
    """Call the component of a plain `data` dict after building its nested components."""
    extra = extra or {}
    dotted = data[COMPONENT_KEY]
    fn = resolve_component(dotted, key_path=key_path)
    call_kwargs = {
        str(k): _build_nested(v, child_path(key_path, k))
        for k, v in data.items()
        if k != COMPONENT_KEY and k not in extra
    }
    call_kwargs.update(extra)
    where = key_path or "config"
    if not callable(fn):
        raise ConfigError(f"{where}: {dotted!r} is not callable")
    _check_binding(fn, dotted, key_path, args, call_kwargs, supplied=tuple(extra))
    try:
        return fn(*args, **call_kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"{where}: {dotted}(...) failed: {type(e).__name__}: {first_line(e)}"
        ) from e


def _build_nested(value: Any, key_path: str) -> Any:
    """Build components inside plain containers; return other values unchanged."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
    if isinstance(value, dict):
        if COMPONENT_KEY in value:
            return _build(value, key_path)
        return {k: _build_nested(v, child_path(key_path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_build_nested(v, child_path(key_path, i)) for i, v in enumerate(value)]
    return value


def _check_binding(
    fn: Any, dotted: str, key_path: str, args: tuple, kwargs: dict, supplied: tuple[str, ...]
) -> None:
    """Raise a `ConfigError` (with a did-you-mean) if the arguments do not fit `fn`'s signature.

    `kwargs` holds the node's own keys and the caller's explicit keyword arguments (`supplied`);
    the problems and their wording are the pre-flight's (`binding_problems`).
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # some builtins have no signature; the call itself will tell
    given = [name for name in kwargs if name not in supplied]
    problems = binding_problems(signature.parameters, dotted, given, supplied, positional=len(args))
    if problems:
        name, message = problems[0]
        raise ConfigError(
            f"{child_path(key_path, name) if name else key_path or 'config'}: {message}"
        )
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{key_path or 'config'}: cannot call {dotted}: {first_line(e)}") from e


def binding_problems(
    params: Mapping[str, inspect.Parameter],
    dotted: str,
    given: Sequence[str],
    supplied: Sequence[str] = (),
    *,
    positional: int = 0,
) -> list[tuple[str | None, str]]:
    """Why keyword arguments `given` (a config node's keys) plus `supplied` (what the caller passes
    itself) do not bind to a signature's `params`: ``(argument or None for the node, message)``.

    The one binder of tunegen: `instantiate` raises the first problem, the pre-flight
    (`preflight`) reports them all. `positional` arguments fill the first positional parameters.
    Unknown arguments get a did-you-mean; a missing required argument is one nobody passes.
    """
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    keywords = [
        p.name for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    problems: list[tuple[str | None, str]] = []
    for name in given:
        param = params.get(name) if isinstance(name, str) else None
        if param is None or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            if not takes_any:
                hint = did_you_mean(str(name), [k for k in keywords if not k.startswith("_")])
                problems.append((name, f"unknown argument of {dotted}{hint}"))
        elif param.kind is param.POSITIONAL_ONLY:
            problems.append(
                (name, f"{dotted} takes {name!r} only by position, so a config cannot set it")
            )
    filled = [
        p.name for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ][:positional]
    for name, param in params.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is param.empty and name not in (*given, *supplied, *filled):
            problems.append((None, f"missing required argument {name!r} of {dotted}"))
    for name in supplied:
        if name not in params and not takes_any:
            problems.append(
                (None, f"{dotted} takes no argument {name!r}, which the recipe passes at run time")
            )
    return problems


def node_path(node: Any) -> str:
    """The dotted key path of an OmegaConf node within its root config, e.g. ``model.layers[0]``."""
    parts: list[str | int] = []
    while node is not None and node._get_parent() is not None:
        key = node._key()
        parts.append(key)
        node = node._get_parent()
    path = ""
    for key in reversed(parts):
        path = child_path(path, key)
    return path


def child_path(path: str, key: Any) -> str:
    """``a.b`` + ``c`` -> ``a.b.c``; ``a.b`` + ``0`` -> ``a.b[0]`` (OmegaConf's spelling)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception message (OmegaConf appends multi-line context)."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
