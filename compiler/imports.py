"""Post-render pass, part 1: write a recipe's import block from the names its code uses.

Templates write no imports. After rendering, the module's symbol tables give every name the code
reads but never binds (builtins aside); each must be in `MODULE_IMPORTS` or `FROM_IMPORTS`, and
exactly those imports are written, deduplicated and sorted the way ruff's isort rules sort them
(`from __future__`, then standard library, then third-party, each `import x` before
`from x import y`). A name the tables do not know is a tunegen bug and fails the compile.
"""

from __future__ import annotations

import builtins
import symtable
import sys

import libcst

from tunegen.compiler.output_check import GeneratedCodeError

__all__ = ["FROM_IMPORTS", "MODULE_IMPORTS", "add_imports", "unbound_names"]

# Names imported as modules: `import torch`.
MODULE_IMPORTS = frozenset({"copy", "sys", "time", "torch"})

# Names imported from a module: `from torch.utils.data import DataLoader`.
FROM_IMPORTS = {
    "partial": "functools",
    "islice": "itertools",
    "DictConfig": "omegaconf",
    "DataLoader": "torch.utils.data",
    "load_training_state": "tunegen.runtime.checkpointing",
    "load_weights_into": "tunegen.runtime.checkpointing",
    "instantiate": "tunegen.runtime.config",
    "LengthBucketSampler": "tunegen.runtime.data",
    "PackSampler": "tunegen.runtime.data",
    "PackedDataset": "tunegen.runtime.data",
    "TokenBudgetSampler": "tunegen.runtime.data",
    "grouped_padded_collate": "tunegen.runtime.data",
    "compile_blocks": "tunegen.runtime.compiling",
    "CompileReport": "tunegen.runtime.compiling",
    "step_in_backward": "tunegen.runtime.optim",
    "ResumableSampler": "tunegen.runtime.data",
    "ShardedSampler": "tunegen.runtime.data",
    "packed_collate": "tunegen.runtime.data",
    "padded_collate": "tunegen.runtime.data",
    "preference_collate": "tunegen.runtime.data",
    "preference_metrics": "tunegen.runtime.dpo",
    "sequence_logps": "tunegen.runtime.dpo",
    "prompt_collate": "tunegen.runtime.data.prompts",
    "cleanup_distributed": "tunegen.runtime.distributed",
    "gather_full_model": "tunegen.runtime.distributed",
    "init_distributed": "tunegen.runtime.distributed",
    "shard_model": "tunegen.runtime.distributed",
    "sum_across_processes": "tunegen.runtime.distributed",
    "resolve_device": "tunegen.runtime.environment",
    "resolve_dtype": "tunegen.runtime.environment",
    "rng_state": "tunegen.runtime.environment",
    "seed_everything": "tunegen.runtime.environment",
    "set_rng_state": "tunegen.runtime.environment",
    "ConfigError": "tunegen.runtime.errors",
    "exact_match_accuracy": "tunegen.runtime.evaluation",
    "sample": "tunegen.runtime.generation",
    "scale_grads": "tunegen.runtime.gradients",
    "completion_samples": "tunegen.runtime.grpo",
    "make_rollout": "tunegen.runtime.grpo",
    "mean_metrics": "tunegen.runtime.grpo",
    "repeat_for_groups": "tunegen.runtime.grpo",
    "rollout_metrics": "tunegen.runtime.grpo",
    "token_logps": "tunegen.runtime.grpo",
    "save_hf_checkpoint": "tunegen.runtime.hf_checkpoint",
    "StopOnSignal": "tunegen.runtime.interrupt",
    "load_recipe_config": "tunegen.runtime.launch",
    "run_main": "tunegen.runtime.launch",
    "apply_lora": "tunegen.runtime.lora",
    "disable_adapters": "tunegen.runtime.lora",
    "lora_state_dict": "tunegen.runtime.lora",
    "mark_only_lora_trainable": "tunegen.runtime.lora",
    "enable_activation_checkpointing": "tunegen.runtime.memory",
    "real_token_count": "tunegen.runtime.metric_logging",
    "throughput": "tunegen.runtime.metric_logging",
    "NonFiniteStepSkipper": "tunegen.runtime.numerics",
    "check_finite_loss": "tunegen.runtime.numerics",
    "save_peft_adapter": "tunegen.runtime.peft_export",
    "Profiler": "tunegen.runtime.profiling",
    "Progress": "tunegen.runtime.progress",
    "dequantize_base_weights": "tunegen.runtime.quantization",
    "quantize_base_weights": "tunegen.runtime.quantization",
    "RunLength": "tunegen.runtime.run_config",
    "split_off": "tunegen.runtime.validation",
    "validation_due": "tunegen.runtime.validation",
}

# Names every module has without importing them.
MODULE_GLOBALS = frozenset({"__file__", "__name__", "__doc__", "__spec__"})

BUILTINS = frozenset(dir(builtins))

# Every generated file starts its imports with this line.
FUTURE = "from __future__ import annotations"


def add_imports(source: str) -> str:
    """`source` with its import block rebuilt: exactly the imports its names need, sorted.

    Imports already in `source` are dropped first, so the block never holds a duplicate or an
    unused import; the new block goes after the module docstring.
    """
    module = _parse(source)
    body = [stmt for stmt in module.body if not _is_import(stmt)]
    module = module.with_changes(body=body)
    names = unbound_names(module.code)
    unknown = sorted(n for n in names if not _importable(n))
    if unknown:
        raise GeneratedCodeError(
            f"generated recipe uses {', '.join(unknown)}, which it neither defines nor imports: "
            "add the name to FROM_IMPORTS or MODULE_IMPORTS in compiler/imports.py"
        )
    start = 1 if body and _is_docstring(body[0]) else 0
    imports = [
        libcst.parse_statement(line + "\n").with_changes(
            leading_lines=[libcst.EmptyLine()] if new_section else []
        )
        for line, new_section in _import_block(names)
    ]
    rest = [_after_blank_line(stmt) for stmt in body[start : start + 1]] + body[start + 1 :]
    return module.with_changes(body=[*body[:start], *imports, *rest]).code


def _after_blank_line(stmt: libcst.BaseStatement) -> libcst.BaseStatement:
    """`stmt` with one blank line before it and its comments."""
    lines = list(stmt.leading_lines)
    while lines and lines[0].comment is None:
        lines.pop(0)
    return stmt.with_changes(leading_lines=[libcst.EmptyLine(), *lines])


def unbound_names(source: str) -> set[str]:
    """Names `source` reads that no assignment, definition, import or builtin binds.

    Python's own symbol tables answer this in a millisecond (libcst's scope analysis takes a
    third of a second per recipe). Without a `from __future__ import annotations` in `source`,
    they include the names used only in annotations, which need importing all the same.
    """
    try:
        top = symtable.symtable(source, "recipe.py", "exec")
    except SyntaxError as exc:
        raise GeneratedCodeError(f"generated recipe does not compile: {exc}") from exc
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    read = set()
    tables = [top]
    while tables:
        table = tables.pop()
        tables += table.get_children()
        read |= {
            s.get_name()
            for s in table.get_symbols()
            if s.is_referenced() and (s.is_global() or table is top)
        }
    return read - bound - BUILTINS - MODULE_GLOBALS


def _import_block(names: set[str]) -> list[tuple[str, bool]]:
    """Import lines, each with whether a blank line goes before it (a new section)."""
    modules = sorted(n for n in names if n in MODULE_IMPORTS)
    members: dict[str, list[str]] = {}
    for name in names - MODULE_IMPORTS:
        members.setdefault(FROM_IMPORTS[name], []).append(name)
    lines: list[tuple[str, bool]] = [(FUTURE, True)]
    for stdlib in (True, False):
        section = [f"import {m}" for m in modules if _is_stdlib(m) == stdlib]
        section += [
            f"from {m} import {', '.join(sorted(members[m], key=_member_key))}"
            for m in sorted(members, key=str.lower)
            if _is_stdlib(m) == stdlib
        ]
        lines += [(line, i == 0) for i, line in enumerate(section)]
    return lines


def _member_key(name: str) -> tuple[int, str]:
    """ruff's isort order within `from x import ...`: CONSTANTS, then Classes, then the rest."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name.lower()


def _is_stdlib(module: str) -> bool:
    return module.partition(".")[0] in sys.stdlib_module_names


def _importable(name: str) -> bool:
    return name in MODULE_IMPORTS or name in FROM_IMPORTS


def _is_import(stmt: libcst.CSTNode) -> bool:
    return isinstance(stmt, libcst.SimpleStatementLine) and all(
        isinstance(s, (libcst.Import, libcst.ImportFrom)) for s in stmt.body
    )


def _is_docstring(stmt: libcst.CSTNode) -> bool:
    return (
        isinstance(stmt, libcst.SimpleStatementLine)
        and isinstance(stmt.body[0], libcst.Expr)
        and isinstance(stmt.body[0].value, libcst.SimpleString)
    )


def _parse(source: str) -> libcst.Module:
    try:
        return libcst.parse_module(source)
    except libcst.ParserSyntaxError as exc:
        line = source.splitlines()[exc.raw_line - 1] if exc.raw_line else ""
        raise GeneratedCodeError(
            f"generated recipe does not parse at line {exc.raw_line}: {line!r}"
        ) from exc
