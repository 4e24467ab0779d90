"""Check a recipe config for every problem that can be found without building anything.

`tunegen validate` and the first lines of every generated recipe call `check_config`, so a typo, a
wrong argument or a missing data file is reported before any model weights are loaded, and all of
them at once. torchtune's ``tune validate`` binds only top-level components and skips missing
arguments; this check goes through the whole tree:

1. every ``_component_`` (at any depth, also inside lists) imports;
2. its arguments bind to the callable's signature (`config.binding_problems`, the binder
   `instantiate` uses): unknown keywords (with a did-you-mean) and missing required arguments,
   except those the recipe passes at run time;
3. a config key that holds a spec value (`CONFIG_KEYS` of the spec schema) keeps exactly the spec
   key's rules (type, range, choices), with the spec's wording; other values match simple type
   annotations of the component that takes them (int, float, str, bool, None, Literal,
   list/tuple, Path, unions);
4. given the recipe's source, keys that no code reads (directly or through an interpolation), and
   keys the recipe reads but the config lacks;
5. files named under ``path``/``source``/``*_path``/``*_file``/``*_dir`` keys exist;
6. ``???`` values are set and interpolations resolve;
7. a component the recipe stores and then calls (``self.loss_fn = instantiate(self.cfg.loss)``,
   later ``self.loss_fn(hidden, weight, labels)``) can take those calls: its ``forward`` (a
   module) or ``__call__`` binds the recipe's arguments, so a swapped loss that expects other
   inputs is reported here rather than as a traceback at the first step.

The recipe owns its contract: what it reads (``self.cfg.a.b`` chains) and which arguments it
passes to each component (``instantiate(self.cfg.optimizer, params=...)``) are read from its
source, so editing the recipe changes what the pre-flight expects. Nothing is instantiated; the
only imports are the modules that ``_component_`` values name.
"""

from __future__ import annotations

import ast
import enum
import inspect
import os
import re
import sys
import types
import typing
from collections import abc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tunegen.compiler.schema import CONFIG_KEYS, check_value

from .config import (
    COMPONENT_KEY,
    LocateError,
    binding_problems,
    child_path,
    did_you_mean,
    expand_home,
    first_line,
    has_key,
    known_names,
    locate,
)
from .errors import Problem

__all__ = [
    "ComponentCall",
    "Problem",
    "check_config",
    "format_problems",
    "recipe_component_calls",
    "recipe_reads",
    "recipe_supplied_args",
]

_CREATED_DIR_KEYS = ("output_dir", "log_dir")
"""Directory keys the recipe creates, so they need not exist beforehand."""

_DICTCONFIG_ATTRS = frozenset(name for name in dir(DictConfig) if not name.startswith("__"))
"""Attribute names that reach a DictConfig method (``cfg.x.items()``), not a config key."""

ANY_ARGUMENT = "**"
"""In supplied arguments: the recipe passes ``**kwargs`` too, so no argument counts as missing."""


def check_config(
    cfg: DictConfig,
    *,
    recipe_source: str | None = None,
    recipe_name: str | None = None,
    supplied_args: Mapping[str, Sequence[str]] | None = None,
) -> list[Problem]:
    """Return every problem found in `cfg`, in config order; an empty list means it looks runnable.

    `recipe_source` is the text of the recipe ``.py`` (`recipe_name` names it in messages): when
    given, keys no ``cfg.…``/``self.cfg.…`` chain reads are reported, and so are keys the recipe
    reads that the config lacks. `supplied_args` names the arguments the recipe passes itself, by
    config node path; by default they are read from the recipe's ``instantiate`` calls. Without a
    recipe they are unknown, so missing arguments are reported only for components nested in
    other components (those only ``instantiate`` builds). Problems never raise; all are collected.
    """
    checker = _Checker(cfg, supplied_args, recipe_name or "the recipe")
    reads: _Reads | None = None
    if recipe_source is not None:
        try:
            chains = recipe_reads(recipe_source)
            if supplied_args is None:
                checker.supplied_args = recipe_supplied_args(recipe_source)
        except SyntaxError as e:
            checker.report("", f"cannot parse the recipe source (line {e.lineno}: {e.msg})")
        else:
            reads = _Reads()
            for chain, whole in chains.items():
                reads.add(chain, in_recipe=True, whole=whole)
            for chain in _interpolation_reads(cfg):
                reads.add(chain, in_recipe=False)
    checker.container(cfg, "", reads, covered=reads is None)
    if reads is not None:
        for path, calls in recipe_component_calls(recipe_source).items():
            _check_component_calls(checker, path, calls)
    return checker.problems


def format_problems(problems: Iterable[Problem], *, source: str | os.PathLike[str]) -> str:
    """One line per problem, prefixed by the config file name (``lora.yaml: optimizer.lrr: …``)."""
    return "\n".join(f"{os.fspath(source)}: {problem}" for problem in problems)


# --------------------------------------------------------------------------------------------------
# Walking the config


class _Checker:
    """Walks the config tree once, collecting problems in document order."""

    def __init__(
        self, cfg: DictConfig, supplied_args: Mapping[str, Sequence[str]] | None, recipe: str
    ) -> None:
        self.cfg = cfg
        self.supplied_args = supplied_args
        self.recipe = recipe
        self.problems: list[Problem] = []

    def report(self, key_path: str, message: str) -> None:
        problem = Problem(key_path, message)
        if problem not in self.problems:  # a value reached through interpolations: once
            self.problems.append(problem)

    def container(
        self, node: DictConfig | ListConfig, path: str, reads: _Reads | None, covered: bool
    ) -> None:
        """Check a mapping or list and everything below it.

        `reads` is the part of the recipe's read chains that reaches this node (None: none does);
        `covered` means some chain reads this whole subtree (or there is no recipe to check against).
        """
        if isinstance(node, DictConfig) and has_key(node, COMPONENT_KEY):
            _check_component(self, node, path)
        keys: Iterable[Any] = list(node) if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            child_reads = reads.children.get(key) if reads and isinstance(key, str) else None
            key_path = child_path(path, key)
            child_covered = covered or isinstance(node, ListConfig)
            if not child_covered:
                if child_reads is None:
                    self.report(key_path, self.unread(node, path, key, reads))
                child_covered = child_reads is None or child_reads.whole
            self.child(node, key, key_path, child_reads, child_covered)
        if reads is not None and isinstance(node, DictConfig):
            for name, child in reads.children.items():
                if child.in_recipe and not has_key(node, name):
                    self.report(
                        child_path(path, name),
                        "the recipe reads this key but the config does not set it",
                    )

    def unread(self, node: DictConfig, path: str, key: str, reads: _Reads | None) -> str:
        """Why an unread key is a problem, and how to fix it: a did-you-mean for a key some code
        reads (one the config lacks first), else remove it or read it in the recipe."""
        read = list(reads.children) if reads is not None else []
        lacking = [name for name in read if not has_key(node, name)]
        known = known_names(self.cfg, path, key)
        hint = did_you_mean(key, lacking, prefix=path, known=known) or did_you_mean(
            key, read, prefix=path
        )
        if hint:
            return f"no code in {self.recipe} reads this key{hint}"
        return (
            f"no code in {self.recipe} reads this key; remove it, or read it in the recipe "
            f"(self.cfg.{child_path(path, key)})"
        )

    def child(
        self,
        parent: DictConfig | ListConfig,
        key: Any,
        path: str,
        reads: _Reads | None,
        covered: bool,
    ) -> None:
        """Check one value: missing, interpolation, then recurse or check it as a file path."""
        raw = parent._get_node(key)
        if OmegaConf.is_missing(parent, key):
            override = path.replace("[", ".").replace("]", "")  # `layers[1]` -> `layers.1`
            self.report(
                path, f"missing value ('???'); set it in the config or with '{override}=...'"
            )
            return
        if raw._is_interpolation():
            try:
                value = parent[key]
            except OmegaConfBaseException as e:
                self.report(path, f"cannot resolve {raw._value()!r} ({first_line(e)})")
                return
        elif isinstance(raw, (DictConfig, ListConfig)):
            # A chain reaching a list reads all of it: items are only addressed by index.
            if isinstance(raw, ListConfig) and reads is not None:
                covered = True
            self.container(raw, path, reads, covered)
            value = raw
        else:
            value = raw._value()
        _check_spec_rules(self, path, value)
        # An interpolated section is checked where it is defined, not again here.
        if isinstance(key, str) and _is_path_key(key) and not isinstance(value, DictConfig):
            _check_files(self, key, value, path)


def _check_spec_rules(checker: _Checker, path: str, value: Any) -> None:
    """A key that holds a spec value keeps the spec key's rules, reported with the spec's words
    at the key that holds the value (`training.batch_size` for `dataloader.batch_size`)."""
    spec_key = CONFIG_KEYS.get(path)
    if spec_key is None:
        return
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    found = check_value(spec_key, value)
    if found is not None:
        where, message = found
        checker.report(_literal_path(checker.cfg, path) + where, message)


def _literal_path(cfg: DictConfig, path: str) -> str:
    """Follow ``${a.b}`` interpolations from `path` to the key that holds the value itself."""
    for _ in range(10):  # interpolation chains are short; a cycle fails to resolve earlier
        node = cfg
        for part in path.split("."):
            node = node._get_node(part) if isinstance(node, DictConfig) else None
        if node is None or not node._is_interpolation():
            return path
        target = re.fullmatch(r"\$\{([\w-]+(?:\.[\w-]+)*)\}", str(node._value()))
        if target is None:
            return path
        path = target.group(1)
    return path


# --------------------------------------------------------------------------------------------------
# Components


def _check_component(checker: _Checker, node: DictConfig, path: str) -> None:
    """Check that the node's ``_component_`` imports and that its arguments fit its signature."""
    key = child_path(path, COMPONENT_KEY)
    try:
        dotted = node[COMPONENT_KEY]
    except OmegaConfBaseException:
        return  # a missing or broken interpolation is reported when its value is walked
    try:
        fn = locate(dotted)
    except LocateError as e:
        checker.report(key, str(e))
        return
    if not callable(fn):
        checker.report(key, f"{dotted!r} is not a class or function")
        return
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return  # some builtins have no signature to check against
    supplied, open_ended = _supplied(checker, node, path)
    args = [k for k in node if k != COMPONENT_KEY]
    for name, message in binding_problems(params, dotted, args, supplied):
        if not (open_ended and message.startswith("missing required argument")):
            checker.report(child_path(path, name) if name else path, message)
    hints = _type_hints(fn, params)
    for name in args:
        param = params.get(name) if isinstance(name, str) else None
        if param is None or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue  # reported by the binder
        if param.kind is param.POSITIONAL_ONLY:
            continue
        if name in supplied:
            checker.report(
                child_path(path, name),
                f"the recipe passes this argument of {dotted}; remove it from the config",
            )
        else:
            _check_argument_type(checker, node, path, name, dotted, param, hints)


def _supplied(checker: _Checker, node: DictConfig, path: str) -> tuple[tuple[str, ...], bool]:
    """The arguments the recipe passes to the component at `path` itself, and whether it may
    pass others too (so that no argument can be called missing).

    Without a recipe to read this from, a component that is not an argument of another component
    may be built by some recipe with any arguments; one inside another component is only ever
    built by `instantiate`, with none.
    """
    if checker.supplied_args is None:
        return (), not _inside_component(node)
    supplied = tuple(checker.supplied_args.get(path, ()))
    return tuple(a for a in supplied if a != ANY_ARGUMENT), ANY_ARGUMENT in supplied


def _inside_component(node: Any) -> bool:
    parent = node._get_parent()
    while parent is not None:
        if isinstance(parent, DictConfig) and has_key(parent, COMPONENT_KEY):
            return True
        parent = parent._get_parent()
    return False


def _check_component_calls(checker: _Checker, path: str, calls: Sequence[ComponentCall]) -> None:
    """The component at `path` must accept every call the recipe makes of the object it builds."""
    node = OmegaConf.select(checker.cfg, path, throw_on_resolution_failure=False)
    if not isinstance(node, DictConfig) or not has_key(node, COMPONENT_KEY):
        return
    try:
        fn = locate(node[COMPONENT_KEY])
    except (OmegaConfBaseException, LocateError):
        return  # reported where the component is walked
    target = _call_target(fn)
    if target is None:
        return
    name, method = target
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):
        return
    params = list(signature.parameters.values())[1:]  # without `self`
    signature = signature.replace(parameters=params)
    plain = signature.replace(  # `(logits, labels)`, as a reader compares it with the call
        parameters=[param.replace(annotation=param.empty) for param in params],
        return_annotation=signature.empty,
    )
    for call in calls:
        if call.open:
            continue
        try:
            signature.bind(*range(call.positional), **dict.fromkeys(call.keywords))
        except TypeError as e:
            hint = next((h for marker, h in _CALL_HINTS.items() if marker in call.text), "")
            checker.report(
                child_path(path, COMPONENT_KEY),
                f"line {call.line} of {checker.recipe} calls it as {call.text}, which "
                f"{name}{plain} cannot take ({e}){hint}",
            )
            return


# What to do when a generated call does not fit, keyed by a name the call passes.
_CALL_HINTS = {
    "output_weight": (
        "; this recipe computes the loss from the final hidden states: for a loss on logits, "
        "set training.chunked_loss: false in the spec and regenerate (tunegen new)"
    ),
}


def _call_target(fn: Any) -> tuple[str, Any] | None:
    """What calling an instance of class `fn` runs, and its name: ``forward`` for a torch module,
    else a ``__call__`` the class defines. None for a function (its result is unknown here)."""
    if not inspect.isclass(fn):
        return None
    torch = sys.modules.get("torch")  # a torch module's class has imported torch already
    if torch is not None and issubclass(fn, torch.nn.Module):
        return f"{fn.__name__}.forward", fn.forward
    if any("__call__" in vars(cls) for cls in fn.__mro__[:-1]):
        return f"{fn.__name__}.__call__", fn.__call__
    return None


def _check_argument_type(
    checker: _Checker,
    node: DictConfig,
    path: str,
    name: str,
    dotted: str,
    param: inspect.Parameter,
    hints: Mapping[str, Any],
) -> None:
    """A configured argument's value must fit the component's annotation of it."""
    key = child_path(path, name)
    annotation = hints.get(name, inspect.Parameter.empty)
    if annotation is inspect.Parameter.empty or key in CONFIG_KEYS:
        return  # a spec value is held to the spec's rules instead
    try:
        value = node[name]
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException:
        return  # reported when the value itself is walked
    if value is None and param.default is None:
        return  # `x: int = None` is an implicit Optional
    if not _matches(value, annotation):
        checker.report(
            key, f"{dotted} expects {_describe(annotation)} here, got {_describe_value(value)}"
        )


def _type_hints(fn: Any, params: Mapping[str, inspect.Parameter]) -> dict[str, Any]:
    """Evaluated annotations of `fn`'s parameters (of ``__init__`` for a class).

    String annotations (``from __future__ import annotations``) are evaluated with
    `typing.get_type_hints`; when that fails, only annotations that are already objects are kept, so
    an unresolvable annotation skips the type check instead of failing it.
    """
    target = fn.__init__ if isinstance(fn, type) else fn
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 -- any error in someone else's annotations means "unknown"
        hints = {}
    for name, param in params.items():
        if name not in hints and not isinstance(param.annotation, str):
            hints[name] = param.annotation
    return {name: hint for name, hint in hints.items() if not isinstance(hint, str)}


_SEQUENCE_ABCS = (abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection, abc.Reversible)
_MAPPING_ABCS = (abc.Mapping, abc.MutableMapping)


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a plain config value fits `annotation`; True when the annotation is not understood.

    Only mismatches that are certain are reported: an annotation this function does not model
    (Callable, TypeVar, Protocol, set, ...) accepts anything.
    """
    if annotation in (inspect.Parameter.empty, Any, object):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    if isinstance(value, dict) and COMPONENT_KEY in value:
        return True  # what a nested component returns is unknown until it is built
    if hasattr(annotation, "__supertype__"):  # typing.NewType
        return _matches(value, annotation.__supertype__)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _matches(value, args[0])
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin is not None:
        return _matches_generic(value, origin, args)
    if isinstance(annotation, type):
        return _matches_class(value, annotation)
    return True


def _matches_generic(value: Any, origin: Any, args: tuple[Any, ...]) -> bool:
    """``list[int]``, ``tuple[float, ...]``, ``Sequence[str]``, ``dict[str, int]`` and the like."""
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        if args == ((),):
            return len(value) == 0
        return not args or (len(args) == len(value) and all(map(_matches, value, args)))
    if origin is list or origin in _SEQUENCE_ABCS:
        # A string is a Sequence (of strings) to Python, but never a list.
        allowed = (list, tuple) if origin is list else (list, tuple, str)
        if not isinstance(value, allowed):
            return False
        item = args[0] if args else Any
        return isinstance(value, str) or all(_matches(v, item) for v in value)
    if origin is dict or origin in _MAPPING_ABCS:
        if not isinstance(value, dict):
            return False
        if len(args) != 2:
            return True
        return all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    return True


def _matches_class(value: Any, cls: type) -> bool:
    """Plain class annotations; YAML only yields None, bool, int, float, str, list and dict."""
    if cls is bool:
        return isinstance(value, bool)
    if cls is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if cls is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if cls in (list, tuple):
        return isinstance(value, (list, tuple))
    if cls in _SEQUENCE_ABCS:
        return isinstance(value, (list, tuple, str))
    if cls is dict or cls in _MAPPING_ABCS:
        return isinstance(value, dict)
    if issubclass(cls, (PurePath, os.PathLike)):
        return isinstance(value, (str, PurePath))
    if issubclass(cls, enum.Enum) and isinstance(value, str):
        return True  # many components accept an enum member by name
    try:
        return isinstance(value, cls)
    except TypeError:  # a Protocol that is not runtime-checkable, for one
        return True


def _describe(annotation: Any) -> str:
    """A short readable name for an annotation: ``int``, ``Path | None``, ``list[int]``."""
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation is Ellipsis:
        return "..."
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_describe(arg) for arg in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(arg) for arg in args)}]"
    if origin is typing.Annotated:
        return _describe(args[0])
    if origin is not None and args:
        name = getattr(origin, "__name__", None) or _describe(origin)
        return f"{name}[{', '.join(_describe(arg) for arg in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return repr(annotation).replace("typing.", "").replace("collections.abc.", "")


def _describe_value(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


# --------------------------------------------------------------------------------------------------
# Files


def _check_files(checker: _Checker, key: str, value: Any, path: str) -> None:
    """The value of a path-like key (or each item of a list there) must exist on disk."""
    if not isinstance(value, ListConfig):
        _check_file(checker, key, value, path)
        return
    for i in range(len(value)):
        try:
            item = value[i]
        except OmegaConfBaseException:
            continue  # reported when the item itself is walked
        _check_file(checker, key, item, child_path(path, i))


def _check_file(checker: _Checker, key: str, value: Any, path: str) -> None:
    """Report a missing file or directory; null means "not used" and URLs are not local files."""
    if not isinstance(value, (str, PurePath)) or not str(value) or "://" in str(value):
        return
    text = str(value)
    location = expand_home(text)
    if key.endswith("_dir"):
        if not location.exists():
            checker.report(path, f"directory {text!r} not found")
        elif not location.is_dir():
            checker.report(path, f"{text!r} is a file, not a directory")
    elif not location.exists():
        checker.report(path, f"file {text!r} not found")
    elif key.endswith("_file") and location.is_dir():
        checker.report(path, f"{text!r} is a directory, not a file")


def _is_path_key(key: str) -> bool:
    if key in _CREATED_DIR_KEYS or key.endswith(tuple("_" + k for k in _CREATED_DIR_KEYS)):
        return False
    return key in ("path", "source") or key.endswith(("_path", "_file", "_dir"))


# --------------------------------------------------------------------------------------------------
# Keys the recipe reads


@dataclass
class _Reads:
    """A trie of the key chains that read the config; `whole` marks a chain that reads the subtree.

    `in_recipe` marks keys the recipe's code reads (not only an interpolation): those must exist.
    """

    whole: bool = False
    in_recipe: bool = False
    children: dict[str, _Reads] = field(default_factory=dict)

    def add(self, chain: Iterable[str], *, in_recipe: bool, whole: bool = True) -> None:
        node = self
        for key in chain:
            node = node.children.setdefault(key, _Reads())
            node.in_recipe = node.in_recipe or in_recipe
        node.whole = node.whole or whole


# `${a.b}`, `${.sibling}`, `${..uncle.x}`; resolver calls like `${oc.env:X}` do not match.
_INTERPOLATION = re.compile(r"\$\{(\.*)([\w-]+(?:\.[\w-]+)*)(?=[}\[])")


def _interpolation_reads(
    node: DictConfig | ListConfig, path: tuple[Any, ...] = ()
) -> Iterator[tuple[Any, ...]]:
    """Key chains that interpolations read: a key used only through ``${...}`` is still used."""
    keys: Iterable[Any] = list(node) if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        raw = node._get_node(key)
        if raw is None:
            continue
        value = raw._value()
        if isinstance(value, str) and raw._is_interpolation():
            for dots, target in _INTERPOLATION.findall(value):
                base = path[: len(path) - len(dots) + 1] if dots else ()
                chain = (*base, *target.split("."))
                # Items of a list are only read through the list; stop the chain there.
                ints = [i for i, k in enumerate(chain) if isinstance(k, int)]
                yield chain[: ints[0]] if ints else chain
        elif isinstance(raw, (DictConfig, ListConfig)):
            yield from _interpolation_reads(raw, (*path, key))


def recipe_reads(source: str) -> dict[tuple[str, ...], bool]:
    """The config key chains a recipe's source reads, e.g. ``{("training", "lr"): True}``.

    The value says whether the chain reads the whole subtree below it (True), or only the key
    itself (False: an alias binding, see below). Chains are rooted at a name ``cfg`` or at
    ``self.cfg``: ``self.cfg.training.lr``, ``cfg["optimizer"]`` and ``cfg.training.get("lr")`` all
    count. A chain stops at an index (``cfg.layers[0]``) or a DictConfig method
    (``cfg.training.items()``) and reads the whole subtree where it stops. A bare ``cfg`` reads
    nothing. A name bound only to a chain (``training = self.cfg.training``) is an alias:
    ``training.lr`` reads ``("training", "lr")``, and only a bare use of the alias reads its whole
    subtree. Raises `SyntaxError`.
    """
    tree = ast.parse(source)
    roots, alias_values = _aliases(tree)
    chains: dict[int, tuple[str, ...]] = {}
    inner: set[int] = set()
    for node in ast.walk(tree):
        found = _chain(node, roots)
        if found is None:
            continue
        chains[id(node)] = found[0]
        inner.update(id(sub) for sub in _chain_parts(node))
    # Binding an alias fetches its key (so the key must exist) but reads nothing below it.
    alias_ids = {id(value) for value in alias_values}
    reads = {chains[key]: False for key in alias_ids if key in chains}
    for key, chain in chains.items():
        if key not in inner and key not in alias_ids:
            reads[chain] = True
    return {chain: reads[chain] for chain in sorted(reads) if chain}


def recipe_supplied_args(source: str) -> dict[str, tuple[str, ...]]:
    """The arguments a recipe passes to each component it builds, by config node path.

    ``instantiate(self.cfg.optimizer, params=p)`` -> ``{"optimizer": ("params",)}`` (aliases of
    config nodes are followed as in `recipe_reads`). ``**kwargs`` or positional arguments after
    the node add `ANY_ARGUMENT`: the recipe may then pass anything. Raises `SyntaxError`.
    """
    tree = ast.parse(source)
    roots, _ = _aliases(tree)
    supplied: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        path = _instantiated_node(node, roots)
        if path is None:
            continue
        names = {keyword.arg or ANY_ARGUMENT for keyword in node.keywords}
        if len(node.args) > 1 or any(isinstance(a, ast.Starred) for a in node.args):
            names.add(ANY_ARGUMENT)
        supplied.setdefault(path, set()).update(names)
    return {path: tuple(sorted(names)) for path, names in sorted(supplied.items())}


def _instantiated_node(node: ast.AST | None, roots: Mapping[str, tuple[str, ...]]) -> str | None:
    """``"optimizer"`` for ``instantiate(self.cfg.optimizer, ...)``; None for anything else."""
    if not (isinstance(node, ast.Call) and _is_instantiate(node.func) and node.args):
        return None
    found = _chain(node.args[0], roots)
    if found is None or not found[1] or not found[0]:
        return None
    return ".".join(found[0])


@dataclass(frozen=True)
class ComponentCall:
    """One call the recipe makes of a component it built: ``self.loss_fn(hidden, w, labels)``.

    `open`: the call passes ``*args`` or ``**kwargs``, so what it binds is unknown.
    """

    line: int
    text: str
    positional: int
    keywords: tuple[str, ...]
    open: bool


def recipe_component_calls(source: str) -> dict[str, list[ComponentCall]]:
    """The calls a recipe makes of the components it stores on ``self``, by config node path.

    ``self.loss_fn = instantiate(self.cfg.loss)`` and later ``self.loss_fn(hidden, w, labels)``
    -> ``{"loss": [ComponentCall(line, "self.loss_fn(hidden, w, labels)", 3, (), False)]}``. An
    attribute counts only if every assignment of it in the file is ``instantiate`` of the same
    node, so one the recipe rebinds (``self.model = compile(self.model)``) is left alone.
    Raises `SyntaxError`.
    """
    tree = ast.parse(source)
    roots, _ = _aliases(tree)
    built: dict[str, set[str | None]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets, path = node.targets, _instantiated_node(node.value, roots)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets, path = [node.target], None  # not a plain `self.x = instantiate(...)`
        else:
            continue
        for attr in filter(None, map(_self_attribute, targets)):
            built.setdefault(attr, set()).add(path)
    components = {attr: paths.pop() for attr, paths in built.items() if len(paths) == 1}
    calls: dict[str, list[ComponentCall]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        path = components.get(_self_attribute(node.func) or "")
        if path is None:
            continue
        calls.setdefault(path, []).append(
            ComponentCall(
                line=node.lineno,
                text=ast.unparse(node),
                positional=len(node.args),
                keywords=tuple(k.arg for k in node.keywords if k.arg is not None),
                open=any(isinstance(a, ast.Starred) for a in node.args)
                or any(k.arg is None for k in node.keywords),
            )
        )
    for found in calls.values():
        found.sort(key=lambda call: call.line)
    return dict(sorted(calls.items()))


def _self_attribute(node: ast.expr) -> str | None:
    """``x`` for ``self.x``, else None."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.attr if node.value.id == "self" else None
    return None


def _is_instantiate(func: ast.expr) -> bool:
    """``instantiate(...)`` or ``config.instantiate(...)``."""
    return (isinstance(func, ast.Name) and func.id == "instantiate") or (
        isinstance(func, ast.Attribute) and func.attr == "instantiate"
    )


def _aliases(tree: ast.AST) -> tuple[dict[str, tuple[str, ...]], list[ast.expr]]:
    """Names that always hold the same config chain, and the expressions that bind them.

    A name is an alias only if every binding of it in the file (assignment, parameter, loop
    variable, ...) is ``name = <the same chain>``; anything else keeps it an ordinary name.
    """
    bindings: dict[str, list[ast.expr | None]] = {}
    assigned: dict[int, ast.expr] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            assigned[id(node.targets[0])] = node.value
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            bindings.setdefault(node.arg, []).append(None)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bindings.setdefault(node.id, []).append(assigned.get(id(node)))
    roots: dict[str, tuple[str, ...]] = {"cfg": ()}
    changed = True
    while changed:  # an alias may be bound to another alias: repeat until nothing new resolves
        changed = False
        for name, values in bindings.items():
            if name in roots or name == "self" or None in values:
                continue
            found = {_chain(value, roots) for value in values}
            if len(found) == 1:
                (chain,) = found
                if chain is not None and chain[0] and chain[1]:
                    roots[name] = chain[0]
                    changed = True
    values = [v for name, vs in bindings.items() if name in roots for v in vs if v is not None]
    return roots, values


def _chain(
    node: ast.AST, roots: Mapping[str, tuple[str, ...]]
) -> tuple[tuple[str, ...], bool] | None:
    """``(keys, open)`` if `node` is a config read chain; `open` is False once it cannot extend.

    `roots` maps names to the chain they stand for (``cfg`` and aliases).
    """
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in roots:
        return roots[node.id], True
    if _self_attribute(node) == "cfg":
        return (), True
    if isinstance(node, ast.Attribute):
        base = _chain(node.value, roots)
        if base is None or not base[1] or node.attr in _DICTCONFIG_ATTRS:
            return None if base is None else (base[0], False)
        return (*base[0], node.attr), True
    if isinstance(node, ast.Subscript):
        base = _chain(node.value, roots)
        if base is None or not base[1]:
            return base
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return (*base[0], key.value), True
        return base[0], False
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("get", "pop")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        base = _chain(node.func.value, roots)
        if base is None or not base[1]:
            return base
        return (*base[0], node.args[0].value), True
    return None


def _chain_parts(node: ast.AST) -> list[ast.AST]:
    """The sub-expressions a chain node extends (they are part of it, not chains of their own)."""
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        return [node.value]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return [node.func, node.func.value]
    return []
