"""Prompt embeddings, computed once per stage: the text encoder is freed right after, before
the optimisation needs the memory."""

from __future__ import annotations

import torch

from ...prior.base import DiffusionPrior


def encode_prompts_once(prior: DiffusionPrior, prompts: list[str]) -> torch.Tensor:
    """(K, L, D): the embeddings of `prompts`, in order; the prior's text encoder is released."""
    embeddings = prior.encode_prompts(prompts)
    prior.release_text_encoder()
    return embeddings


def edit_prompts(target_prompt: str, edit_prompt: str) -> list[str]:
    """An edit's prompts in score_distillation_loss's order [prompt, "", negative]: target, empty
    and (when given) the edit prompt, so its CSD gradient is Eq. 11; without an edit prompt it is
    plain CSD towards the target (Eq. 7)."""
    prompts = [target_prompt, ""]
    if edit_prompt.strip():
        prompts.append(edit_prompt)
    return prompts
