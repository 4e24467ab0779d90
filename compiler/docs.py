"""Generate `docs/spec.md` from the schema, so the reference can never drift from the code.

python -m tunegen.compiler.docs > docs/spec.md
"""

from __future__ import annotations

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tunegen.compiler.render import yaml_value
from tunegen.compiler.schema import Spec, bounds_of, strip_optional, type_name

__all__ = ["spec_reference"]

INTRO = """\
# Spec reference (v1)

A spec is a short YAML file that `tunegen new --spec FILE` compiles into a recipe
(`generated/<name>.py`) and its config (`generated/<name>.yaml`). These keys are a public contract:
they are only ever extended, never renamed. Unknown keys, wrong types and out-of-range values are
errors that name the file, line and key path.

Paths: every path in a spec (`data.path`, `eval.path`, `tokenizer`, `model` and `kd.teacher` when
they are dirs, `checkpoint.output_dir`) is relative to the spec file's folder, whatever the working
directory of `tunegen new`; an unset `checkpoint.output_dir` is `runs/<name>` in that working
directory. The generated config holds each path relative to the config file's own folder (or
absolute, for one outside the working directory), and the recipe resolves them against that
folder, so `tunegen run generated/x.py` and `python generated/x.py --config generated/x.yaml` work
from any directory. A path given as a command-line override is relative to the working directory.

This page is generated from `compiler/schema.py` (`python -m tunegen.compiler.docs > docs/spec.md`).

```yaml
name: my_recipe
method: lora
model: tiny
data: {path: data/train.jsonl, format: instruct, template: alpaca, max_seq_len: 256}
lora: {rank: 8, alpha: 16, dropout: 0.0, targets: [q_proj, v_proj]}
training: {epochs: 1, batch_size: 4, lr: 3.0e-4, scheduler: cosine, warmup_steps: 0}
checkpoint: {output_dir: runs/my_recipe, save_every_n_steps: null}
logging: {every_n_steps: 1}
```
"""


def spec_reference() -> str:
    """The Markdown reference of every spec key."""
    parts = [INTRO, _table(Spec, "")]
    for name, field in Spec.model_fields.items():
        section = strip_optional(field.annotation)
        if isinstance(section, type) and issubclass(section, BaseModel):
            parts.append(
                f"## `{name}`\n\n{section.__doc__.strip()}\n\n{_table(section, name + '.')}"
            )
    return "\n".join(parts)


def _table(cls: type[BaseModel], prefix: str) -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        rows.append(
            f"| `{prefix}{name}` | {type_name(field.annotation)} | {_default(field)} | {_doc(field)} |"
        )
    return "\n".join(rows) + "\n"


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if isinstance(field.default, BaseModel):
        return "see below"
    return f"`{yaml_value(field.default)}`"


def _doc(field: FieldInfo) -> str:
    words = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    bounds = [f"{words[key]} {value:g}" for key, value in bounds_of(field).items()]
    doc = field.description or ""
    return f"{doc} ({', '.join(bounds)})" if bounds else doc


if __name__ == "__main__":
    print(spec_reference(), end="")
