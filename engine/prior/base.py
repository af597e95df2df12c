"""What every diffusion prior offers the score-distillation loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ControlImages:
    """ControlNet conditions at render resolution, (B, 3, H, W) in [0, 1], keyed by "depth"/"canny"."""

    images: dict[str, torch.Tensor]
    scale: float


class DiffusionPrior:
    """A text-conditioned noise predictor plus the image <-> model-input mapping.

    Subclasses: `LatentPrior` (Stable Diffusion 1.x/2.x: renders go through the VAE encoder
    with gradient) and `PixelPrior` (DeepFloyd IF stage I style and the bundled prior).
    """

    pixel_space: bool
    resolution: int  # the render size the model was trained on (pixels)
    alphas_cumprod: torch.Tensor  # (T,) on the prior's device, float32
    device: torch.device
    dtype: torch.dtype
    name: str
    # The scheduler's prediction_type: what the network outputs. predict_noise always returns noise.
    prediction_type: str = "epsilon"
    # What loading decided that the user should hear (ControlNets picked, a slower fallback): the
    # jobs report each as a warning event.
    warnings: list[str]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings (K, L, D), computed once per job; a prompt longer than the text encoder
        reads adds a warning (warn_truncated_prompts)."""
        raise NotImplementedError

    def warn_truncated_prompts(self, tokenizer, prompts: list[str], limit: int) -> None:
        """Add a warning when a prompt has more than `limit` tokens (with the special ones): the
        encoder is given only the first `limit`, so the words after them change nothing."""
        lengths = [len(ids) for ids in tokenizer(list(prompts), truncation=False)["input_ids"]]
        longest = max(range(len(prompts)), key=lengths.__getitem__, default=None)
        if longest is None or lengths[longest] <= limit:
            return
        prompt = prompts[longest]
        shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        message = (f"The prompt \"{shown}\" is {lengths[longest]} tokens long, but {self.name}'s text encoder "
                   f"reads only {limit}: the words after them are ignored. Shorten the prompt.")
        if message not in self.warnings:
            self.warnings.append(message)

    def release_text_encoder(self) -> None:
        """Free the text encoder once every prompt is encoded (T5-XXL alone is ~9 GB)."""
        raise NotImplementedError

    def images_to_model_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the model's x_0, keeping the autograd graph."""
        raise NotImplementedError

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor,
                      control: ControlImages | None = None) -> torch.Tensor:
        """The noise in `noisy` (float32), whatever the network predicts (noise_from_prediction)."""
        raise NotImplementedError

    @property
    def supports_controlnet(self) -> bool:
        return False

    def noise_from_prediction(self, prediction: torch.Tensor, noisy: torch.Tensor,
                              timesteps: torch.Tensor) -> torch.Tensor:
        """The network's output as a noise prediction (float32). A v-prediction model outputs
        v = sqrt(a) eps - sqrt(1 - a) x_0 with x_t = sqrt(a) x_0 + sqrt(1 - a) eps, so
        eps = sqrt(a) v + sqrt(1 - a) x_t (a = alpha_bar_t)."""
        prediction = prediction.float()
        if self.prediction_type == "epsilon":
            return prediction
        if self.prediction_type != "v_prediction":
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        abar = self.alphas_cumprod[timesteps].view(-1, *([1] * (prediction.dim() - 1)))
        return abar.sqrt() * prediction + (1 - abar).sqrt() * noisy.float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod[timesteps].view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
