# Compiled by tunegen 0.1.0 from grpo_lora_dapo_iterations.yaml (spec sha256 d8d6cc0ac8a2).
# This file is yours to edit. Run it with its config:
#   tunegen run generated/grpo_lora_dapo_iterations.py [key=value ...]
#   python generated/grpo_lora_dapo_iterations.py --config generated/grpo_lora_dapo_iterations.yaml [key=value ...]
"""GRPO with LoRA: adapters learn from rewards of the model's own completions."""

from __future__ import annotations

import sys
import time

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tunegen.runtime.checkpointing import load_training_state, load_weights_into
from tunegen.runtime.config import instantiate
from tunegen.runtime.data import ResumableSampler
from tunegen.runtime.data.prompts import prompt_collate
from tunegen.runtime.environment import (
    resolve_device,
    resolve_dtype,
    rng_state,
    seed_everything,
    set_rng_state,
)
from tunegen.runtime.errors import ConfigError
from tunegen.runtime.generation import sample
from tunegen.runtime.grpo import (
    completion_samples,
    make_rollout,
    mean_metrics,
    repeat_for_groups,
    rollout_metrics,
    token_logps,
)
from tunegen.runtime.interrupt import StopOnSignal
from tunegen.runtime.launch import load_recipe_config, run_main
from tunegen.runtime.lora import (
    apply_lora,
    disable_adapters,
    lora_state_dict,
    mark_only_lora_trainable,
)
from tunegen.runtime.metric_logging import real_token_count, throughput
from tunegen.runtime.numerics import check_finite_loss
from tunegen.runtime.peft_export import save_peft_adapter
from tunegen.runtime.progress import Progress
from tunegen.runtime.run_config import RunLength

# Only the adapters are saved: the base weights never change.
WEIGHTS_FILE = "adapter.safetensors"


class LoRAGRPORecipe:
    """GRPO with LoRA: adapters learn from rewards of the model's own completions.

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
        self.model = self._setup_model()
        self.optimizer = self._setup_optimizer()
        self.lr_scheduler = self._setup_lr_scheduler()
        self.loss_fn = instantiate(self.cfg.loss)
        # The user's reward functions, imported from their files and checked.
        self.rewards = instantiate(self.cfg.rewards)
        # Sampling draws from its own generator, saved with each checkpoint: a
        # resumed run samples the same completions as an uninterrupted one.
        self.generator = torch.Generator(device=self.device).manual_seed(
            self.cfg.environment.seed
        )
        self.load_checkpoint()

    def _setup_data(self) -> DataLoader:
        dataset = instantiate(self.cfg.dataset, tokenizer=self.tokenizer)
        self.sampler = ResumableSampler(
            len(dataset),
            shuffle=self.cfg.dataloader.shuffle,
            seed=self.cfg.environment.seed,
        )
        dataloader = DataLoader(
            dataset,
            batch_size=self.cfg.dataloader.batch_size,
            sampler=self.sampler,
            collate_fn=prompt_collate,
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
        self.generator.set_state(state["sampling_rng"])
        self.metric_logger.log_text(f"resumed from {path} at step {self.global_step}")

    def train(self) -> None:
        """Train for `total_steps` steps (`training.max_steps`, else the epochs)."""
        grad_accum = self.cfg.training.grad_accum
        batch_size = self.cfg.dataloader.batch_size
        pad_id = self.tokenizer.pad_id
        group_size = self.cfg.grpo.group_size
        max_new_tokens = self.cfg.grpo.max_new_tokens
        temperature = self.cfg.grpo.temperature
        num_iterations = self.cfg.grpo.num_iterations
        log_completions_every = self.cfg.grpo.log_completions_every_n_steps
        stop_id = self.tokenizer.eos_id
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
                # 1. Rollouts: group_size completions per prompt from the policy,
                #    scored by the rewards; advantages are relative to the group.
                rollouts, reward_metrics = [], []
                prompts, completions, rewards = [], [], []
                num_inputs, generate_seconds = 0, 0.0
                for _ in range(grad_accum):
                    # B prompts -> B * G rows, each prompt repeated for its group.
                    batch = repeat_for_groups(next(batches), group_size)
                    generate_start = time.perf_counter()
                    new_ids = sample(
                        self.model,
                        batch["prompt_ids"],
                        max_new_tokens=max_new_tokens,
                        temperature=temperature,
                        top_p=self.cfg.grpo.top_p,
                        stop_tokens={stop_id},
                        pad_id=pad_id,
                        generator=self.generator,
                    )
                    generate_seconds += time.perf_counter() - generate_start
                    texts = [self.tokenizer.decode(ids) for ids in new_ids]
                    step = self.global_step + 1
                    batch_rewards, scores = self.rewards(
                        batch["prompts"], texts, batch["fields"], step=step
                    )
                    rollout = make_rollout(
                        batch["prompt_ids"],
                        new_ids,
                        max_new_tokens=max_new_tokens,
                        stop_id=stop_id,
                        pad_id=pad_id,
                        device=self.device,
                    )
                    advantages = self.loss_fn.advantages(batch_rewards, group_size)
                    rollout = rollout._replace(advantages=advantages.to(self.device))
                    tokens, labels = rollout.tokens, rollout.labels  # (B * G, T)
                    if num_iterations > 1:
                        # Later updates weigh tokens against the sampling policy.
                        with torch.no_grad():
                            old_logps = token_logps(
                                self.model(tokens), labels, temperature=temperature
                            )
                        rollout = rollout._replace(old_logps=old_logps)
                    with torch.no_grad(), disable_adapters(self.model):
                        reference_logits = self.model(tokens)  # (B * G, T, vocab)
                    reference_logps = token_logps(
                        reference_logits, labels, temperature=temperature
                    )
                    rollout = rollout._replace(reference_logps=reference_logps)
                    rollouts.append(rollout)
                    prompts += batch["prompts"]
                    completions += texts
                    rewards.append(batch_rewards)
                    reward_metrics.append(scores)
                    num_inputs += real_token_count(tokens, labels, pad_id=pad_id)
                rewards = torch.cat(rewards)
                # 2. num_iterations policy updates on these rollouts (the last below).
                # The loss type's denominator spans the step: accumulation is exact.
                normalizer = self.loss_fn.normalizer(rollouts)
                for iteration in range(num_iterations):
                    loss_sum, outputs = 0.0, []
                    for rollout in rollouts:
                        logits = self.model(rollout.tokens)  # (B * G, T, vocab)
                        logps = token_logps(
                            logits, rollout.labels, temperature=temperature
                        )
                        output = self.loss_fn(logps, rollout)
                        (output.loss_sum / normalizer).backward()
                        loss_sum += output.loss_sum.item() / normalizer
                        outputs.append(output)
                    if iteration < num_iterations - 1:
                        check_finite_loss(loss_sum, step=self.global_step + 1)
                        grad_norm = torch.nn.utils.clip_grad_norm_(
                            self.model.parameters(), self.cfg.training.clip_grad_norm
                        )
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                check_finite_loss(loss_sum, step=self.global_step + 1)
                num_tokens = sum(output.num_tokens for output in outputs)
                if (
                    log_completions_every is not None
                    and step % log_completions_every == 0
                ):
                    for line in completion_samples(prompts, completions, rewards):
                        self.metric_logger.log_text(f"step {step}: {line}")
                seconds = time.perf_counter() - step_start
                metrics = {
                    "loss": loss_sum,
                    **rollout_metrics(rollouts, outputs, rewards),
                    **mean_metrics(reward_metrics),
                    "samples_per_s": len(completions) / seconds,
                    "generate_share": generate_seconds / seconds,
                }
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
                "sampling_rng": self.generator.get_state(),
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
    recipe = LoRAGRPORecipe(cfg)
    recipe.setup()
    recipe.train()
    recipe.export_model()
    recipe.summarize()
    recipe.cleanup()


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
