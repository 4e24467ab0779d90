"""`tunegen run`: run a recipe with its config and command-line overrides.

A recipe whose config has a `distributed` section is launched through PyTorch's own launcher,
`torch.distributed.run` (what `torchrun` runs), with the section's processes, nodes and
rendezvous; `--nproc-per-node`, `--nnodes`, `--node-rank` and `--rdzv-endpoint` override them
(and reach the recipe as config overrides, so the recipe checks the launch it got).
"""

from __future__ import annotations

import logging
import os
import runpy
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tunegen.compiler.cli.app import (
    OVERRIDES_HELP,
    Debug,
    Overrides,
    app,
    debug_enabled,
    overrides_of,
    set_debug,
)
from tunegen.runtime.config import apply_overrides, load_config
from tunegen.runtime.errors import TunegenError
from tunegen.runtime.launch import load_recipe_config

__all__ = ["run"]

RUN_EPILOG = f"""{OVERRIDES_HELP}

\b
Example:
  tunegen run generated/lora.py training.max_steps=50 training.lr=1e-3
  tunegen run generated/lora_fsdp.py --nproc-per-node 4   (a distributed: spec)"""

_LAUNCH_FLAGS = {
    "nproc_per_node": "--nproc-per-node",
    "nnodes": "--nnodes",
    "node_rank": "--node-rank",
    "rdzv_endpoint": "--rdzv-endpoint",
}


@app.command(
    context_settings={"ignore_unknown_options": True},
    epilog=RUN_EPILOG,
)
def run(
    recipe: Annotated[
        Path,
        typer.Argument(metavar="RECIPE", help="A generated (or hand-written) recipe .py file."),
    ],
    overrides: Overrides = None,
    configs: Annotated[
        list[Path] | None,
        typer.Option(
            "--config",
            "-c",
            metavar="PATH",
            show_default=False,
            help="Config file (default: the recipe's .yaml).",
        ),
    ] = None,
    nproc_per_node: Annotated[
        int | None,
        typer.Option(
            "--nproc-per-node",
            min=1,
            show_default=False,
            help="Processes per node (default: the config's distributed.nproc_per_node).",
        ),
    ] = None,
    nnodes: Annotated[
        int | None,
        typer.Option("--nnodes", min=1, show_default=False, help="Nodes (machines) in the run."),
    ] = None,
    node_rank: Annotated[
        int | None,
        typer.Option("--node-rank", min=0, show_default=False, help="This node's rank."),
    ] = None,
    rdzv_endpoint: Annotated[
        str | None,
        typer.Option(
            "--rdzv-endpoint",
            metavar="HOST:PORT",
            show_default=False,
            help="Rendezvous of a multi-node run.",
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """Run a recipe with its config and command-line overrides."""
    set_debug(debug)
    overrides = overrides_of("run", overrides)
    if not recipe.is_file():
        raise TunegenError(f"{recipe}: recipe file not found")
    if configs and len(configs) > 1:  # click would silently take the last one
        raise TunegenError(f"--config is given {len(configs)} times; pass one config file")
    config = configs[0] if configs else recipe.with_suffix(".yaml")
    if not config.is_file():
        raise TunegenError(f"{config}: config file not found (pass --config)")
    flags = {
        "nproc_per_node": nproc_per_node,
        "nnodes": nnodes,
        "node_rank": node_rank,
        "rdzv_endpoint": rdzv_endpoint,
    }
    flags = {key: value for key, value in flags.items() if value is not None}
    launch = launch_settings(recipe, config, overrides, flags)
    if launch is not None:
        overrides = [*overrides, *_as_overrides(flags)]
    argv = ["--config", str(config), *overrides]
    if debug_enabled():
        argv.append("--debug")
    if launch is not None:
        sys.exit(launch_distributed(recipe, argv, launch))
    sys.argv = [str(recipe), *argv]
    sys.path.insert(0, str(recipe.resolve().parent))
    runpy.run_path(str(recipe), run_name="__main__")


def launch_settings(
    recipe: Path, config: Path, overrides: list[str], flags: dict[str, Any]
) -> dict[str, Any] | None:
    """The run's launch (processes, nodes, rendezvous) when its config has a `distributed`
    section, the flags overriding it; None for a single-device recipe (refused with flags)."""
    try:
        cfg = apply_overrides(load_config(config), overrides)
    except TunegenError:
        if flags:
            raise
        return None  # the recipe reports it, as it reports every config problem
    section = cfg.get("distributed")
    if section is None:
        if flags:
            flag = _LAUNCH_FLAGS[next(iter(flags))]
            raise TunegenError(
                f"{flag}: {recipe} is a single-device recipe ({config} has no distributed"
                " section); add distributed: to its spec and regenerate it"
            )
        return None
    # The whole pre-flight the recipe runs, before any process starts.
    cfg = load_recipe_config(
        ["--config", str(config), *overrides, *_as_overrides(flags)], recipe_file=recipe
    )
    launch = {key: cfg.distributed[key] for key in _LAUNCH_FLAGS}
    if launch["nnodes"] > 1 and not launch["rdzv_endpoint"]:
        raise TunegenError(
            f"--rdzv-endpoint: a run on {launch['nnodes']} nodes needs the rendezvous HOST:PORT"
            " (or distributed.rdzv_endpoint in the config)"
        )
    if launch["node_rank"] >= launch["nnodes"]:
        raise TunegenError(
            f"--node-rank: {launch['node_rank']} is not below the number of nodes"
            f" ({launch['nnodes']})"
        )
    _check_gpus(str(cfg.get("environment", {}).get("device", "auto")), launch["nproc_per_node"])
    return launch


def _as_overrides(flags: dict[str, Any]) -> list[str]:
    """Launch flags as the config overrides that tell the recipe how it was launched."""
    return [f"distributed.{key}={value}" for key, value in flags.items()]


def _check_gpus(device: str, nproc_per_node: int) -> None:
    """One process per GPU: more processes than visible GPUs is refused before launching."""
    import torch

    if not device.startswith("cuda") and not (device == "auto" and torch.cuda.is_available()):
        return
    visible = torch.cuda.device_count()
    if nproc_per_node > visible:
        raise TunegenError(
            f"--nproc-per-node: {nproc_per_node} processes per node but {visible} CUDA device(s)"
            " are visible; one process per GPU (set distributed.nproc_per_node or"
            " environment.device=cpu)"
        )


def launch_distributed(recipe: Path, argv: list[str], launch: dict[str, Any]) -> int:
    """Run `recipe argv` on every process of this node through `torch.distributed.run` and
    return the exit status: 0, or the first failed process's own status (rank 0 has printed
    why), so a user error still exits 2."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = ["--nproc-per-node", str(launch["nproc_per_node"])]
    if launch["nnodes"] > 1 or launch["rdzv_endpoint"]:
        args += ["--nnodes", str(launch["nnodes"]), "--node-rank", str(launch["node_rank"])]
        args += ["--rdzv-backend", "c10d", "--rdzv-endpoint", str(launch["rdzv_endpoint"])]
    else:
        args.append("--standalone")  # one node: a free local port, nothing to configure
    args += ["--max-restarts", "0", str(recipe), *argv]
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, without its banner
    # The launcher's own log lines (a rank failed, SIGTERM sent to the others) repeat what
    # rank 0 has printed; --debug keeps them.
    if not debug_enabled():
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(args))
    except ChildFailedError as failed:
        _, first = failed.get_first_failure()
        return first.exitcode if first.exitcode > 0 else 1
    except SignalException as stopped:  # Ctrl-C / SIGTERM: passed on to every process, which
        return 128 + int(stopped.sigval)  # saved at the end of its step and printed the resume
    return 0
