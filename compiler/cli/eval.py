"""`tunegen eval RUN_DIR_OR_MODEL --data F`: perplexity and exact match of a model on a file.

Perplexity is exp of the token-weighted mean loss over the tokens that carry the loss in
training (text: all; instruct and chat: the answers), tokenized by the training dataset classes.
Exact match (instruct and chat data) compares the greedy answer with the reference (the record's
`output`, or a conversation's last assistant reply). The data format and template default to
the run's own (from its saved config); `--format` and `--template` override them.
`--lm-eval-tasks` runs lm-evaluation-harness tasks on the model instead (`runtime.lm_eval_adapter`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tunegen.compiler.cli.app import Debug, app, set_debug
from tunegen.runtime.errors import TunegenError

if TYPE_CHECKING:  # the runtime (and torch) load only when the command runs
    from tunegen.runtime.model_loading import LoadedModel

__all__ = ["eval_command", "evaluate_file"]

FORMATS = ("text", "instruct", "chat")
EVAL_EPILOG = """\b
Examples:
  tunegen eval runs/demo --data specs/data/demo_heldout.jsonl
  tunegen eval runs/lora --data held_out.jsonl --max-samples 200 --json
  tunegen eval runs/lora --lm-eval-tasks arc_easy      needs: pip install tunegen[lm-eval]"""


@app.command("eval", epilog=EVAL_EPILOG)
def eval_command(
    model: Annotated[
        str,
        typer.Argument(
            metavar="RUN_DIR_OR_MODEL",
            help="A run dir, a Hugging Face checkpoint or PEFT adapter dir, or a built-in model.",
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Option("--data", metavar="FILE", help="A .jsonl or .json file to evaluate on."),
    ] = None,
    data_format: Annotated[
        str | None,
        typer.Option(
            "--format", metavar="FORMAT", help="text, instruct or chat (default: the run's)."
        ),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(
            "--template", metavar="NAME", help="Prompt or chat template (default: the run's)."
        ),
    ] = None,
    max_samples: Annotated[
        int | None,
        typer.Option(
            "--max-samples", min=1, metavar="N", help="Evaluate the first N records only."
        ),
    ] = None,
    max_new_tokens: Annotated[
        int,
        typer.Option("--max-new-tokens", min=1, metavar="N", help="Greedy answer budget."),
    ] = 64,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, metavar="N", help="Samples per forward pass.")
    ] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    lm_eval_tasks: Annotated[
        str | None,
        typer.Option(
            "--lm-eval-tasks", metavar="T[,T]", help="Run lm-evaluation-harness tasks instead."
        ),
    ] = None,
    lm_eval_include: Annotated[
        Path | None,
        typer.Option(
            "--lm-eval-include", metavar="DIR", help="A dir of your own lm-eval task YAMLs."
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.")
    ] = "auto",
    debug: Debug = False,
) -> None:
    """Perplexity and exact match of a trained model on a data file, or lm-eval tasks."""
    set_debug(debug)
    if (data is None) == (lm_eval_tasks is None):
        raise TunegenError("tunegen eval: give exactly one of --data FILE or --lm-eval-tasks T")
    if data is not None and not data.is_file():
        raise TunegenError(f"--data: {data}: file not found")
    if data_format is not None and data_format not in FORMATS:
        raise TunegenError(f"--format: {data_format!r} is not one of {', '.join(FORMATS)}")
    if lm_eval_tasks is not None:
        _require_lm_eval()
    from tunegen.runtime.model_loading import load_trained_model

    loaded = load_trained_model(model, device=device)
    if lm_eval_tasks is not None:
        report = _lm_eval(loaded, lm_eval_tasks, lm_eval_include, max_samples, batch_size)
    else:
        assert data is not None
        report = evaluate_file(
            loaded,
            data,
            data_format=data_format,
            template=template,
            max_samples=max_samples,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
    if as_json:
        typer.echo(json.dumps(report))
    else:
        _print_report(report)


def evaluate_file(
    loaded: LoadedModel,
    data: Path,
    *,
    data_format: str | None,
    template: str | None,
    max_samples: int | None,
    max_new_tokens: int,
    batch_size: int,
) -> dict[str, Any]:
    """Perplexity (and exact match for instruct and chat data) of `loaded` on `data`."""
    from tunegen.runtime.evaluation import exact_match, exact_match_examples, loss_on

    data_format, template = _format_and_template(loaded, data, data_format, template)
    dataset = _dataset(loaded, data, data_format, template)
    examples = [dataset[i] for i in range(len(dataset))][:max_samples]
    loss = loss_on(loaded.model, examples, pad_id=loaded.tokenizer.pad_id, batch_size=batch_size)
    report: dict[str, Any] = {
        "model": loaded.source,
        "data": str(data),
        "format": data_format,
        "template": template,
        "samples": len(examples),
        "loss": loss.loss,
        "perplexity": loss.perplexity,
        "loss_tokens": loss.tokens,
    }
    if data_format in ("instruct", "chat"):
        assert template is not None
        prompts = exact_match_examples(
            loaded.tokenizer, data, data_format=data_format, template=template
        )[:max_samples]
        report["exact_match"] = exact_match(
            loaded.model,
            loaded.tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            template=template if data_format == "chat" else None,
        )
        report["exact_match_samples"] = len(prompts)
    return report


def _format_and_template(
    loaded: LoadedModel, data: Path, data_format: str | None, template: str | None
) -> tuple[str, str | None]:
    """The flags, else the run's, else what the records look like (template: alpaca / tokenizer)."""
    from tunegen.runtime.model_loading import run_data_format

    run_format, run_template = run_data_format(loaded.config)
    if data_format is None:
        data_format = run_format if run_format in FORMATS else _guess_format(data)
    if data_format == "text":
        return data_format, None
    if template is None:
        if run_format == data_format and run_template is not None:
            template = run_template
        elif data_format == "chat" and loaded.tokenizer.chat_template is not None:
            template = "tokenizer"
        elif data_format == "instruct":
            template = "alpaca"
        else:
            raise TunegenError(
                f"{loaded.source}: no chat template for {data} (the tokenizer has none and no run"
                " config names one); pass --template NAME"
            )
    return data_format, template


def _guess_format(data: Path) -> str:
    """text, instruct or chat, from the fields of the file's first record."""
    from tunegen.runtime.data import read_numbered_records

    records = read_numbered_records(data)
    first = records[0].record if records else {}
    if "messages" in first or "conversations" in first:
        return "chat"
    if "instruction" in first:
        return "instruct"
    if "text" in first:
        return "text"
    raise TunegenError(
        f"{data}: cannot tell its format from the first record's fields; pass --format"
        f" ({', '.join(FORMATS)})"
    )


def _dataset(loaded: LoadedModel, data: Path, data_format: str, template: str | None) -> Any:
    """The training dataset class of `data_format` over `data`, masked as the run trained."""
    from omegaconf import OmegaConf

    from tunegen.runtime.data import ChatDataset, InstructDataset, TextDataset

    config = loaded.config
    max_seq_len = OmegaConf.select(config, "dataset.max_seq_len", default=None) if config else None
    common = {
        "source": data,
        "max_seq_len": int(max_seq_len or loaded.model.max_seq_len),
        "max_dropped_fraction": 1.0,  # report on what can be scored
    }
    if data_format == "text":
        return TextDataset(loaded.tokenizer, **common)
    on_input = (
        OmegaConf.select(config, "dataset.train_on_input", default=False) if config else False
    )
    cls = InstructDataset if data_format == "instruct" else ChatDataset
    return cls(loaded.tokenizer, template=template, train_on_input=bool(on_input), **common)


def _require_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise TunegenError(
            "--lm-eval-tasks needs lm-evaluation-harness: pip install lm-eval"
            " (or pip install tunegen[lm-eval])"
        )


def _lm_eval(
    loaded: LoadedModel,
    tasks: str,
    include: Path | None,
    limit: int | None,
    batch_size: int,
) -> dict[str, Any]:
    """Run lm-eval `tasks` (comma-separated) on the model; its per-task metrics."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from tunegen.runtime.lm_eval_adapter import TunegenLM

    if include is not None and not include.is_dir():
        raise TunegenError(f"--lm-eval-include: {include}: no such dir")
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    manager = TaskManager(include_path=str(include) if include else None)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise TunegenError(f"--lm-eval-tasks: no lm-eval task named {unknown[0]!r}")
    results = simple_evaluate(
        model=TunegenLM(loaded.model, loaded.tokenizer, batch_size=batch_size),
        tasks=names,
        task_manager=manager,
        limit=limit,
    )
    metrics = {  # lm-eval names metrics "acc,none" (metric, filter): keep the metric
        task: {
            key.removesuffix(",none"): value
            for key, value in values.items()
            if isinstance(value, (int, float)) and key != "sample_len"
        }
        for task, values in results["results"].items()
    }
    return {"model": loaded.source, "lm_eval": metrics}


def _print_report(report: dict[str, Any]) -> None:
    if "lm_eval" in report:
        typer.echo(f"{report['model']}: lm-eval")
        for task, values in report["lm_eval"].items():
            shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            typer.echo(f"  {task}: {shown}")
        return
    what = report["format"] + (f", template {report['template']}" if report["template"] else "")
    typer.echo(f"{report['model']} on {report['data']} ({what}; {report['samples']} samples)")
    typer.echo(
        f"  perplexity   {report['perplexity']:.4g}  (loss {report['loss']:.4f} over"
        f" {report['loss_tokens']:,} tokens)"
    )
    if "exact_match" in report:
        n = report["exact_match_samples"]
        right = round(report["exact_match"] * n)
        typer.echo(f"  exact match  {report['exact_match']:.1%}  ({right} of {n}, greedy)")
