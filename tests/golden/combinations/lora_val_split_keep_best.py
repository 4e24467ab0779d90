# Compiled by tunegen 0.1.0 from lora_val_split_keep_best.yaml (spec sha256 1b5cf8d1d785).
# This file is yours to edit. Run it with its config:
#   tunegen run generated/lora_val_split_keep_best.py [key=value ...]
#   python generated/lora_val_split_keep_best.py --config generated/lora_val_split_keep_best.yaml [key=value ...]
"""LoRA fine-tuning: low-rank adapters train while the base weights stay frozen."""

from __future__ import annotations

import sys
import time
from functools import partial
from itertools import islice

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tunegen.runtime.checkpointing import load_training_state, load_weights_into
from tunegen.runtime.config import instantiate
from tunegen.runtime.data import ResumableSampler, padded_collate
from tunegen.runtime.environment import (
    resolve_device,
    resolve_dtype,
    rng_state,
    seed_everything,
    set_rng_state,
)
from tunegen.runtime.errors import ConfigError
from tunegen.runtime.gradients import scale_grads
from tunegen.runtime.interrupt import StopOnSignal
from tunegen.runtime.launch import load_recipe_config, run_main
from tunegen.runtime.lora import apply_lora, lora_state_dict, mark_only_lora_trainable
from tunegen.runtime.metric_logging import real_token_count, throughput
from tunegen.runtime.numerics import check_finite_loss
from tunegen.runtime.peft_export import save_peft_adapter
from tunegen.runtime.progress import Progress
from tunegen.runtime.run_config import RunLength
from tunegen.runtime.validation import split_off, validation_due

# Only the adapters are saved: the base weights never change.
WEIGHTS_FILE = "adapter.safetensors"


class LoRAFinetuneRecipe:
    """LoRA fine-tuning: low-rank adapters train while the base weights stay frozen.

    `setup()` builds every component from the config, `load_checkpoint()` continues an
    interrupted run, `train()` runs the loop, `save_checkpoint()` writes the weights and
    the state needed to resume, `cleanup()` releases what is open.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.environment.device)
        self.dtype = resolve_dtype(cfg.environment.dtype, self.device)
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
        self.val_dataloader = self._setup_val_data()
        self.model = self._setup_model()
        self.optimizer = self._setup_optimizer()
        self.lr_scheduler = self._setup_lr_scheduler()
        self.loss_fn = instantiate(self.cfg.loss)
        self.load_checkpoint()

    def _setup_data(self) -> DataLoader:
        dataset = instantiate(self.cfg.dataset, tokenizer=self.tokenizer)
        # A share of the samples is held out for validation and never trained on;
        # which ones depends only on the seed.
        dataset, self.val_dataset = split_off(
            dataset,
            fraction=self.cfg.dataloader.val_split,
            seed=self.cfg.environment.seed,
        )
        self.sampler = ResumableSampler(
            len(dataset),
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

    def _setup_val_data(self) -> DataLoader:
        """Validation batches in file order, padded (never packed), every sample."""
        val_dataset = self.val_dataset  # held out of the training data in _setup_data()
        return DataLoader(
            val_dataset,
            batch_size=self.cfg.dataloader.batch_size,
            collate_fn=partial(padded_collate, pad_id=self.tokenizer.pad_id),
            # Its own generator: iterating it draws nothing from the training RNG.
            generator=torch.Generator(),
        )

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
        )
        mark_only_lora_trainable(model)
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
                for _ in range(grad_accum):
                    batch = next(batches)
                    tokens = batch["tokens"].to(self.device)  # (B, T)
                    labels = batch["labels"].to(self.device)  # (B, T), -100: no loss
                    # The loss projects the hidden states onto the vocabulary a few
                    # rows at a time: the (B, T, vocab) logits never exist at once.
                    hidden = self.model.hidden_states(tokens)  # (B, T, D)
                    batch_loss, batch_tokens = self.loss_fn(
                        hidden, self.model.output_weight, labels
                    )
                    batch_loss.backward()
                    loss_sum += batch_loss.item()
                    num_tokens += int(batch_tokens)
                    num_inputs += real_token_count(tokens, labels, pad_id=pad_id)
                check_finite_loss(loss_sum, step=self.global_step + 1)
                # The loss is a sum over tokens. Dividing the gradients by the window's
                # token count keeps accumulation exact for batches of unequal length.
                scale_grads(self.model, 1.0 / max(num_tokens, 1))
                metrics = {"loss": loss_sum / max(num_tokens, 1)}
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
                self._validate_if_due()
                self._save_if_due()
                stop.check(self.global_step)
        self.save_checkpoint()
        self.progress.close()
        stop.release(self.global_step)

    def _validate_if_due(self) -> None:
        """Validate every training.val_every_n_steps steps (null: at each epoch's end)
        and at the last step; log the metrics at this step."""
        due = validation_due(
            self.global_step,
            every_n_steps=self.cfg.training.val_every_n_steps,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
        )
        if not due:
            return
        metrics = self.validate()
        self.metric_logger.log(self.global_step, metrics)
        self.progress.validation(self.global_step, metrics)
        # Keep this step's weights in best/ if its validation loss is the lowest
        # so far (keep_last never prunes best/).
        self.checkpointer.save_best(
            self.global_step,
            lora_state_dict(self.model),
            filename=WEIGHTS_FILE,
            metrics=metrics,
        )

    def validate(self) -> dict[str, float]:
        """The metrics on the validation data (its first training.val_max_batches
        batches; null: all), with the model in eval mode and no gradients."""
        self.model.eval()
        batches = islice(self.val_dataloader, self.cfg.training.val_max_batches)
        with torch.no_grad():
            loss_sum, num_tokens = 0.0, 0
            for batch in batches:
                tokens = batch["tokens"].to(self.device)  # (B, T)
                labels = batch["labels"].to(self.device)  # (B, T), -100: no loss
                hidden = self.model.hidden_states(tokens)  # (B, T, D)
                batch_loss, batch_tokens = self.loss_fn(
                    hidden, self.model.output_weight, labels
                )
                loss_sum += batch_loss.item()
                num_tokens += int(batch_tokens)
            # Weighted by tokens, as the training loss is.
            metrics = {"val_loss": loss_sum / max(num_tokens, 1)}
        self.model.train()
        return metrics

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
        export = self.cfg.export
        # The export dirs belong to this run: a resumed run replaces them.
        save_peft_adapter(
            self.model, export.output_dir, base_model=export.base_model, overwrite=True
        )
        self.metric_logger.log_text(f"adapter in PEFT format: {export.output_dir}")

    def summarize(self) -> None:
        """Print what the run did (steps, time, losses, memory) and where it wrote."""
        self.progress.summary(self.cfg.checkpointer.output_dir)

    def cleanup(self) -> None:
        self.metric_logger.close()


def main(argv: list[str]) -> None:
    # The config is checked against this file before anything is built: typos, unknown
    # component arguments, missing files and keys no code reads are reported together.
    cfg = load_recipe_config(argv, recipe_file=__file__)
    recipe = LoRAFinetuneRecipe(cfg)
    recipe.setup()
    recipe.train()
    recipe.export_model()
    recipe.summarize()
    recipe.cleanup()


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
