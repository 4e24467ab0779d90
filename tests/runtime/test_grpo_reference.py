"""GRPO's reference model: with LoRA it is the policy with its adapters off, and it gives the base
model's log-probabilities; at step 0 the policy is the reference, so the KL term is zero."""

from __future__ import annotations

import copy

import pytest
import torch

from tunegen.runtime.generation import sample
from tunegen.runtime.grpo import GRPOLoss, group_advantages, make_rollout, token_logps
from tunegen.runtime.lora import apply_lora, disable_adapters
from tunegen.runtime.models import llama


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return llama(
        vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, max_seq_len=32
    )


def _rollout(model: torch.nn.Module):
    """Four sampled completions of two prompts, laid out for the forward pass."""
    prompts = [[1, 5, 6], [1, 7]] * 2
    generator = torch.Generator().manual_seed(3)
    completions = sample(model, prompts, max_new_tokens=5, stop_tokens={2}, generator=generator)
    rollout = make_rollout(prompts, completions, max_new_tokens=5, stop_id=2, pad_id=0)
    return rollout._replace(advantages=group_advantages(torch.tensor([1.0, 0, 0, 1]), 2))


def test_adapters_off_gives_the_base_models_logps() -> None:
    base = _model().eval()
    policy = copy.deepcopy(base)
    apply_lora(policy, targets=["q_proj", "v_proj"], rank=4, alpha=8)
    for name, param in policy.named_parameters():
        if "lora_b" in name:  # trained adapters: the policy now differs from the base
            torch.nn.init.normal_(param, std=0.5)
    policy.eval()
    rollout = _rollout(base)
    with torch.no_grad():
        expected = token_logps(base(rollout.tokens), rollout.labels)
        with disable_adapters(policy):
            reference = token_logps(policy(rollout.tokens), rollout.labels)
        adapted = token_logps(policy(rollout.tokens), rollout.labels)
    torch.testing.assert_close(reference, expected, rtol=0, atol=1e-6)
    assert (adapted - expected).abs().max() > 1e-3


@pytest.mark.parametrize("reference", ["adapters_off", "frozen_copy"])
def test_kl_is_zero_at_step_zero(reference: str) -> None:
    """Before any update the policy is its reference: per-token KL exactly 0, whatever beta."""
    policy = _model()
    if reference == "adapters_off":
        apply_lora(policy, targets=["q_proj", "v_proj"], rank=4, alpha=8)  # lora_b starts at 0
        frozen = None
    else:
        frozen = copy.deepcopy(policy).eval()
    policy.eval()
    rollout = _rollout(policy)
    with torch.no_grad():
        if frozen is None:
            with disable_adapters(policy):
                reference_logps = token_logps(policy(rollout.tokens), rollout.labels)
        else:
            reference_logps = token_logps(frozen(rollout.tokens), rollout.labels)
    logps = token_logps(policy(rollout.tokens), rollout.labels)
    output = GRPOLoss(kl_beta=0.5, max_new_tokens=5)(
        logps, rollout._replace(reference_logps=reference_logps)
    )
    assert output.num_tokens > 0
    assert output.kl_sum == 0.0
