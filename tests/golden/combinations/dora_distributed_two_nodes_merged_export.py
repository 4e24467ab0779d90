# Compiled by tunegen 0.1.0 from dora_distributed_two_nodes_merged_export.yaml (spec sha256 5bd2d380c573).
# This file is yours to edit. Run it with its config:
#   tunegen run generated/dora_distributed_two_nodes_merged_export.py [key=value ...]
#   python generated/dora_distributed_two_nodes_merged_export.py --config generated/dora_distributed_two_nodes_merged_export.yaml [key=value ...]
#   torchrun --nproc-per-node N <this file> --config <its config> [key=value ...]
#   (N: distributed.nproc_per_node; tunegen run launches torchrun itself)
"""DoRA fine-tuning: adapters and per-row magnitudes train; the base stays frozen."""

from __future__ import annotations

import sys
import time
from functools import partial

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tunegen.runtime.checkpointing import load_training_state, load_weights_into
from tunegen.runtime.config import instantiate
from tunegen.runtime.data import ShardedSampler, padded_collate
from tunegen.runtime.distributed import (
    cleanup_distributed,
    gather_full_model,
    init_distributed,
    shard_model,
    sum_across_processes,
)
from tunegen.runtime.environment import (
    resolve_device,
    resolve_dtype,
    rng_state,
    seed_everything,
    set_rng_state,
)
from tunegen.runtime.errors import ConfigError
from tunegen.runtime.gradients import scale_grads
from tunegen.runtime.hf_checkpoint import save_hf_checkpoint
from tunegen.runtime.interrupt import StopOnSignal
from tunegen.runtime.launch import load_recipe_config, run_main
from tunegen.runtime.lora import apply_lora, lora_state_dict, mark_only_lora_trainable
from tunegen.runtime.metric_logging import real_token_count, throughput
from tunegen.runtime.numerics import check_finite_loss
from tunegen.runtime.peft_export import save_peft_adapter
from tunegen.runtime.progress import Progress
from tunegen.runtime.run_config import RunLength

# Only the adapters are saved: the base weights never change.
WEIGHTS_FILE = "adapter.safetensors"


class DoRAFinetuneRecipe:
    """DoRA fine-tuning: adapters and per-row magnitudes train; the base stays frozen.

    `setup()` builds every component from the config, `load_checkpoint()` continues an
    interrupted run, `train()` runs the loop, `save_checkpoint()` writes the weights and
    the state needed to resume, `cleanup()` releases what is open.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.environment.device)
        self.dtype = resolve_dtype(cfg.environment.dtype, self.device)
        # One process per device, in the process group torchrun describes.
        self.processes = init_distributed(
            self.device,
            nproc_per_node=cfg.distributed.nproc_per_node,
            nnodes=cfg.distributed.nnodes,
            node_rank=cfg.distributed.node_rank,
            rdzv_endpoint=cfg.distributed.rdzv_endpoint,
        )
        self.device = self.processes.device
        seed_everything(cfg.environment.seed)
        self.global_step = 0
        self.saved_step: int | None = None

    def setup(self) -> None:
        self.metric_logger = instantiate(self.cfg.logging.metric_logger)
        self.checkpointer = instantiate(self.cfg.checkpointer)
        # Settle resuming (refusing a wrong setting) before anything slow is built.
        self.resume_path = self.checkpointer.check_resume(
            self.cfg.training.resume, config=self.cfg
        )
        self.metric_logger.start_at(self.checkpointer.step_of(self.resume_path))
        self.tokenizer = instantiate(self.cfg.tokenizer)
        # Data first: a bad record should stop the run before any weights are built.
        self.dataloader = self._setup_data()
        self.model = self._setup_model()
        self.optimizer = self._setup_optimizer()
        self.lr_scheduler = self._setup_lr_scheduler()
        self.loss_fn = instantiate(self.cfg.loss)
        # Sharded checkpoints: each rank saves and loads its part.
        self.checkpointer.attach(self.model, self.optimizer)
        world_size = self.processes.world_size
        per_step = (
            self.cfg.dataloader.batch_size * self.cfg.training.grad_accum * world_size
        )
        self.metric_logger.log_text(
            f"{world_size} processes: {per_step} samples per step in all"
        )
        self.load_checkpoint()

    def _setup_data(self) -> DataLoader:
        dataset = instantiate(self.cfg.dataset, tokenizer=self.tokenizer)
        # Each rank takes every world_size-th sample of one global order, so the
        # ranks' batches together are one process's batches of batch_size x world_size.
        self.sampler = ShardedSampler(
            len(dataset),
            rank=self.processes.rank,
            world_size=self.processes.world_size,
            shuffle=self.cfg.dataloader.shuffle,
            seed=self.cfg.environment.seed,
        )
        dataloader = DataLoader(
            dataset,
            batch_size=self.cfg.dataloader.batch_size,
            sampler=self.sampler,
            collate_fn=partial(padded_collate, pad_id=self.tokenizer.pad_id),
            drop_last=True,
            # Its own generator: an epoch's start draws nothing from the global
            # RNG that dropout uses, so a resumed run draws what the first run did.
            generator=torch.Generator(),
        )
        # A step takes grad_accum micro-batches; a last partial window is skipped.
        self.steps_per_epoch = len(dataloader) // self.cfg.training.grad_accum
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"dataset: {len(dataset)} samples are too few for one optimizer step "
                "(dataloader.batch_size x training.grad_accum)"
            )
        return dataloader

    def _setup_model(self) -> torch.nn.Module:
        model = instantiate(self.cfg.model)
        model = model.to(device=self.device, dtype=self.dtype)
        # Adapters go on last, so they start from the base weights training will see.
        apply_lora(
            model,
            targets=list(self.cfg.lora.targets),
            rank=self.cfg.lora.rank,
            alpha=self.cfg.lora.alpha,
            dropout=self.cfg.lora.dropout,
            use_dora=True,
        )
        mark_only_lora_trainable(model)
        # FSDP2: each block, then the root, keeps 1/world_size of its weights.
        shard_model(
            model,
            reshard_after_forward=self.cfg.distributed.reshard_after_forward,
            cpu_offload=self.cfg.distributed.cpu_offload,
            dtype=self.dtype,
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        self.metric_logger.log_text(
            f"model: {total:,} params, {trainable:,} trainable"
            f" ({self.dtype} on {self.device})"
        )
        return model

    def _setup_optimizer(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return instantiate(self.cfg.optimizer, params=trainable)

    def _setup_lr_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        training = self.cfg.training
        # training.max_steps, when set, decides the length; else training.epochs does.
        run_length = RunLength.from_config(
            epochs=training.epochs,
            max_steps=training.max_steps,
            steps_per_epoch=self.steps_per_epoch,
            batch_size=self.cfg.dataloader.batch_size,
            grad_accum=training.grad_accum,
        )
        self.total_steps = run_length.total_steps
        self.metric_logger.log_text(run_length.summary())
        return instantiate(
            self.cfg.lr_scheduler,
            optimizer=self.optimizer,
            total_steps=self.total_steps,
        )

    def load_checkpoint(self) -> None:
        """Continue from a checkpoint when `training.resume` asks for one."""
        path = self.resume_path
        if path is None:
            return
        weights, state = self.checkpointer.load(path, filename=WEIGHTS_FILE)
        load_weights_into(self.model, weights, strict=False)
        load_training_state(self.optimizer, self.lr_scheduler, state)
        self.global_step = self.saved_step = state["global_step"]
        set_rng_state(state["rng"])
        self.metric_logger.log_text(f"resumed from {path} at step {self.global_step}")

    def train(self) -> None:
        """Train for `total_steps` steps (`training.max_steps`, else the epochs)."""
        grad_accum = self.cfg.training.grad_accum
        batch_size = self.cfg.dataloader.batch_size
        pad_id = self.tokenizer.pad_id
        # Ctrl-C / SIGTERM: finish the step, save, print how to resume, exit 130 / 143.
        stop = StopOnSignal(self.save_checkpoint, self.checkpointer.latest)
        # On a terminal, a live line: step, epoch, loss, lr, tokens/s, ETA, memory.
        self.progress = Progress(
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            start_step=self.global_step,
            device=self.device,
            mode=self.cfg.logging.progress,
        )
        self.model.train()
        while self.global_step < self.total_steps:
            # The data position follows from the step, so a resumed run continues it.
            epoch, step_in_epoch = divmod(self.global_step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch, skip=step_in_epoch * grad_accum * batch_size)
            batches = iter(self.dataloader)
            steps_left = self.total_steps - self.global_step
            for _ in range(min(self.steps_per_epoch - step_in_epoch, steps_left)):
                step_start = time.perf_counter()
                loss_sum, num_tokens, num_inputs = 0.0, 0, 0
                micro_batches_left = grad_accum
                for _ in range(grad_accum):
                    batch = next(batches)
                    tokens = batch["tokens"].to(self.device)  # (B, T)
                    labels = batch["labels"].to(self.device)  # (B, T), -100: no loss
                    logits = self.model(tokens)  # (B, T, vocab)
                    batch_loss, batch_tokens = self.loss_fn(logits, labels)
                    # Ranks exchange gradients once, in the step's last backward.
                    micro_batches_left -= 1
                    self.model.set_requires_gradient_sync(micro_batches_left == 0)
                    batch_loss.backward()
                    loss_sum += batch_loss.item()
                    num_tokens += int(batch_tokens)
                    num_inputs += real_token_count(tokens, labels, pad_id=pad_id)
                # Sums over all ranks: the loss is normalised by the global token
                # count, as in one process with the whole global batch.
                loss_sum, num_tokens, num_inputs = sum_across_processes(
                    loss_sum, num_tokens, num_inputs
                )
                check_finite_loss(loss_sum, step=self.global_step + 1)
                # The loss is a sum over tokens. Dividing the gradients by the window's
                # token count keeps accumulation exact for batches of unequal length.
                scale_grads(self.model, 1.0 / max(num_tokens, 1))
                metrics = {"loss": loss_sum / max(num_tokens, 1)}
                # FSDP2 averaged the ranks' gradients; the loss sums the global batch.
                scale_grads(self.model, self.processes.world_size)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    self.model.parameters(), self.cfg.training.clip_grad_norm
                )
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                self._log_step(
                    num_inputs,
                    **metrics,
                    grad_norm=grad_norm.item(),
                    **throughput(
                        inputs=num_inputs,
                        loss_tokens=num_tokens,
                        seconds=time.perf_counter() - step_start,
                    ),
                )
                self.lr_scheduler.step()
                self._save_if_due()
                stop.check(self.global_step)
        self.save_checkpoint()
        self.progress.close()
        stop.release(self.global_step)

    def _log_step(self, num_inputs: int, /, **metrics: float) -> None:
        step = self.global_step
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]  # the lr of this step
        self.progress.update(step, metrics, tokens=num_inputs)
        if step % self.cfg.logging.every_n_steps == 0 or step == self.total_steps:
            self.metric_logger.log(step, metrics)

    def _save_if_due(self) -> None:
        every = self.cfg.training.save_every_n_steps
        due = every is not None and self.global_step % every == 0
        if due and self.global_step < self.total_steps:  # train() saves the last step
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        """Write the adapter weights and everything needed to resume from this step."""
        if self.saved_step == self.global_step:
            return  # already saved at this step (e.g. a resumed run that had finished)
        self.checkpointer.save(
            self.global_step,
            lora_state_dict(self.model),
            filename=WEIGHTS_FILE,
            recipe_state={
                "global_step": self.global_step,
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "rng": rng_state(),
            },
        )
        self.saved_step = self.global_step

    def export_model(self) -> None:
        """Write the final model where peft loads it directly."""
        # Every rank helps gather the full weights; rank 0 writes them.
        full_model = gather_full_model(self.model)
        if full_model is None:
            return
        self.model = full_model
        export = self.cfg.export
        # The export dirs belong to this run: a resumed run replaces them.
        save_peft_adapter(
            self.model, export.output_dir, base_model=export.base_model, overwrite=True
        )
        self.metric_logger.log_text(f"adapter in PEFT format: {export.output_dir}")
        save_hf_checkpoint(
            self.model,
            export.merged_output_dir,
            source_dir=export.source_dir,
            tokenizer=self.tokenizer,
            overwrite=True,
        )
        self.metric_logger.log_text(
            f"merged model in HF format: {export.merged_output_dir}"
        )

    def summarize(self) -> None:
        """Print what the run did (steps, time, losses, memory) and where it wrote."""
        self.progress.summary(self.cfg.checkpointer.output_dir)

    def cleanup(self) -> None:
        cleanup_distributed()
        self.metric_logger.close()


def main(argv: list[str]) -> None:
    # The config is checked against this file before anything is built: typos, unknown
    # component arguments, missing files and keys no code reads are reported together.
    cfg = load_recipe_config(argv, recipe_file=__file__)
    recipe = DoRAFinetuneRecipe(cfg)
    recipe.setup()
    recipe.train()
    recipe.export_model()
    recipe.summarize()
    recipe.cleanup()


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
