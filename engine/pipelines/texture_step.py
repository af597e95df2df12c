"""One optimisation step of the texture job: eager, or with static shapes in one CUDA graph.

A step (paper section 5.3): draw a view from the pre-rasterised pool, evaluate the texture
field at the view's visible surface points, shade with a random light and background, encode
the render into the prior's input (VAE, with gradient), one batched no-grad prior call for
[prompt, "", negative] (plus ControlNets), the score-distillation gradient, backward, Adam.
An albedo field is shaded by `shade` under a random directional light near the camera; a PBR
field (base colour, roughness, metallic) by `shade_pbr` under a random environment of the bank,
turned at random about +Z (engine/render/pbr.py), its sRGB base colour made linear first.
The edit job runs the same step with the prompts [target, "", edit] (Eq. 11) and a Preservation
term: an image-space L2 to a reference field's render from the same view, light and background.
A region job (engine/pipelines/kit/regions.py) renders the view's kept values outside the region and
the field inside (RegionLayer.blend), so the gradient reaches the field only there; its preservation
term counts each pixel by the kept share (1 - the field's share): nothing in the region's core.

  EagerTextureStep    the reference: dynamic shapes (boolean-mask indexing), Python-float
                      settings, random draws inside `score_distillation_loss`. CPU default.
  StaticTextureStep   the same maths with every shape fixed: each view's visible points are
                      padded to the pool's maximum N_max, and the padding scatters into a trash
                      pixel that the image never contains, so it receives exactly zero gradient;
                      every per-step value (view buffers, light or environment, background, timestep, noise,
                      w2, ControlNet scale) is copied into a fixed buffer first. Random numbers
                      are drawn from the job's generator in the eager order, so both formulations
                      see the same views, lights, timesteps and noise.
  GraphedTextureStep  StaticTextureStep captured once, forward + backward + Adam
                      (capturable), as one torch.cuda.CUDAGraph (PyTorch's "whole-network
                      capture"): a step is a few buffer copies and one graph replay, instead
                      of thousands of kernel launches. CUDA default.

`make_texture_step` picks one; a graph that cannot be captured is tried again without the
optional kernels (FastStepOptions), then falls back to the eager step, with a warning. Every
step class takes `step` (0-based) and returns the loss (a 0-d tensor).
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import EditJobConfig, TextureJobConfig
from ..errors import first_line
from ..field.texture_field import BASE_COLOUR_CHANNELS, TextureField
from ..guidance.score_distillation import (batch_embeddings, distill, guidance_direction, sample_timesteps_and_noise,
                                           score_distillation_loss)
from ..prior.base import ControlImages, DiffusionPrior
from ..prior.fast.channels_last import nhwc_transformer_outputs, set_memory_format
from ..prior.fast.controlnets import concurrent_controlnets, prior_modules, shared_controlnet_condition
from ..prior.fast.elementwise_triton import fused_elementwise
from ..prior.fast.group_norm_triton import triton_available, triton_group_norms
from ..prior.fast.vae_encoding import half_precision_math_attention
from ..render.cameras import Cameras
from ..render.gbuffer import GBuffer
from ..render.pbr import EnvironmentLighting, environment_bank, sample_environment_lighting, shade_pbr
from ..render.shading import Lighting, sample_backgrounds, sample_lighting, shade
from .views import RegionLayer, ViewPool

MODES = ("auto", "eager", "static", "graphed")
# Untimed steps run on a side stream before capture (lazy initialisation of cuBLAS/cuDNN
# handles and workspaces, Adam's state); their effect on the field is undone afterwards.
WARMUP_STEPS = 3


@dataclass
class Preservation:
    """The edit's pull back towards where it started: `weight` times preservation_loss between the
    field's render and the (frozen) reference field's render from the same view, light and background."""

    reference_field: TextureField
    weight: float


def preservation_loss(rgb: Tensor, reference: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
    """Image-space L2: the mean over pixels of the squared RGB difference to the reference render,
    each pixel counted by `pixel_weight` (1, H, W, 1) when given."""
    squared = ((rgb - reference.detach()) ** 2).sum(dim=-1)
    if pixel_weight is not None:
        squared = squared * pixel_weight[..., 0]
    return squared.mean()


def blended(values: Tensor, layer: RegionLayer | None) -> Tensor:
    """A field's values as a region job shows them (RegionLayer.blend); unchanged without a region."""
    return values if layer is None else layer.blend(values)


def kept_share(layer: RegionLayer | None) -> Tensor | None:
    """Per pixel, the share of the kept texture: what a region edit's preservation term counts."""
    return None if layer is None else 1.0 - layer.weight


# A view's light: none (lighting off), a directional light (albedo) or an environment (pbr).
Light = Lighting | EnvironmentLighting | None


def render_field_view(field: TextureField, view: GBuffer) -> Tensor:
    """The field's values as an image (1, H, W, channels): queried only at visible surface points."""
    values = torch.zeros(*view.mask.shape, field.channels, device=view.position.device)
    values[view.mask] = field(view.position[view.mask])
    return values


def view_directions(view: GBuffer) -> Tensor:
    """(1, H, W, 3) unit vectors from each pixel's surface point towards the camera."""
    camera = view.cameras.camera_positions[:, None, None, :].to(view.position.dtype)
    return F.normalize(camera - view.position, dim=-1)


def srgb_to_linear(encoded: Tensor) -> Tensor:
    """The sRGB decoding of values in [0, 1]: what shading needs of a base-colour texture's values
    (the inverse of pbr.linear_to_srgb)."""
    safe = encoded.clamp_min(0.04045)  # keeps the unused branch's gradient finite at 0
    return torch.where(encoded <= 0.04045, encoded / 12.92, ((safe + 0.055) / 1.055) ** 2.4)


def sample_light(lighting: bool, material: str, cameras: Cameras, generator: torch.Generator,
                 device: torch.device) -> Light:
    """One view's random light, drawn from `generator`: a directional light near the camera for
    albedo, an environment of the bank turned about +Z for pbr, none when lighting is off."""
    if not lighting:
        return None
    if material == "pbr":
        return sample_environment_lighting(1, generator, device)
    return sample_lighting(cameras.to(device), generator)


def shade_values(values: Tensor, normal: Tensor, view_dir: Tensor, mask: Tensor, light: Light,
                 background: Tensor) -> Tensor:
    """The render (1, H, W, 3) of a field's values (1, H, W, channels): an albedo lit by `shade`, a
    PBR material (sRGB base colour, roughness, metallic) by `shade_pbr`; background off the mask."""
    if values.shape[-1] == BASE_COLOUR_CHANNELS:
        return shade(values, normal, mask, light, background)
    base_colour = srgb_to_linear(values[..., :BASE_COLOUR_CHANNELS])
    roughness, metallic = values[..., 3:4], values[..., 4:5]
    return shade_pbr(base_colour, roughness, metallic, normal, view_dir, mask, light, background)


def make_optimizer(field: TextureField, learning_rate: float, capturable: bool = False) -> torch.optim.Adam:
    if capturable:  # step counts live on the GPU, so a CUDA graph can replay the update
        return torch.optim.Adam(field.parameters(), lr=learning_rate, eps=1e-15, capturable=True)
    return torch.optim.Adam(field.parameters(), lr=learning_rate, eps=1e-15)


class EagerTextureStep:
    """The reference step, exactly as the job has always run it."""

    def __init__(self, field: TextureField, prior: DiffusionPrior, views: ViewPool, cameras: Cameras,
                 embeddings: Tensor, config: TextureJobConfig | EditJobConfig, generator: torch.Generator,
                 device: torch.device, preservation: Preservation | None = None):
        self.field, self.prior, self.views, self.cameras = field, prior, views, cameras
        self.embeddings, self.config, self.generator, self.device = embeddings, config, generator, device
        self.preservation = preservation
        self.optimizer = make_optimizer(field, config.learning_rate)
        self.warnings: list[str] = []

    def __call__(self, step: int) -> Tensor:
        config, generator, device = self.config, self.generator, self.device
        index = int(torch.randint(len(self.cameras), (1,), generator=generator))
        view, control = self.views.get(index)
        layer = self.views.layer(index)
        light = sample_light(config.lighting, self.field.material, self.cameras.index([index]), generator, device)
        background = sample_backgrounds(1, generator, device)
        view_dir = view_directions(view)
        rgb = shade_values(blended(render_field_view(self.field, view), layer), view.normal, view_dir, view.mask,
                           light, background)
        x = self.prior.images_to_model_input(rgb.permute(0, 3, 1, 2))

        control_images = ControlImages(control, config.prior.controlnet_scale_at(step)) if control else None
        loss = score_distillation_loss(self.prior, x, self.embeddings, config.guidance, step, generator,
                                       control_images).loss
        if self.preservation is not None:
            with torch.no_grad():
                reference = shade_values(blended(render_field_view(self.preservation.reference_field, view), layer),
                                         view.normal, view_dir, view.mask, light, background)
            loss = loss + self.preservation.weight * preservation_loss(rgb, reference, kept_share(layer))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


@dataclass
class FastStepOptions:
    """How the static/graphed step computes; none of these changes what it computes.

    share_condition      each ControlNet embeds the view's condition image once, not once per prompt
    overlap_controlnets  (CUDA) the ControlNets run side by side on their own streams
    triton_group_norm    (CUDA) GroupNorm statistics by a Triton split reduction (prior/group_norm_triton.py)
    vae_math_attention   (CUDA) the VAE's single-head 512-wide attention through SDPA's math kernels in
                         half precision: the memory-efficient kernel PyTorch picks for it takes ~6 ms
                         in backward, and the math kernels by default upcast to float32 (SIMT GEMMs)
    shuffle_points       (CUDA) each view's points in a fixed random order, so neighbouring threads of
                         the hash grid's backward rarely add into the same coarse-level row at once
    channels_last        (CUDA, with triton_group_norm) the prior's networks run NHWC end to end: cuDNN
                         computes convolutions in NHWC, so NCHW tensors are converted around every one
    fused_elementwise    (CUDA) convolution biases (on NHWC outputs) and GEGLU each in one vectorised
                         Triton kernel instead of PyTorch's strided ones (prior/elementwise_triton.py)
    """

    share_condition: bool = True
    overlap_controlnets: bool = True
    triton_group_norm: bool = True
    vae_math_attention: bool = True
    shuffle_points: bool = True
    channels_last: bool = True
    fused_elementwise: bool = True


class _PackedView:
    """A view's visible surface points padded to N_max, and the pixel each one lands on
    (padding lands on the trash pixel H * W). `shuffle_seed` puts the points in a fixed random order."""

    def __init__(self, view: GBuffer, n_max: int, shuffle_seed: int | None = None):
        height, width = view.mask.shape[-2:]
        pixels = torch.nonzero(view.mask.reshape(-1)).squeeze(1)  # row-major, as view.position[view.mask]
        if shuffle_seed is not None:
            order = torch.randperm(pixels.shape[0], generator=torch.Generator().manual_seed(shuffle_seed))
            pixels = pixels[order.to(pixels.device)]
        self.count = int(pixels.shape[0])
        self.points = view.position.new_zeros(n_max, 3)
        self.points[:self.count] = view.position.reshape(-1, 3)[pixels]
        self.pixels = torch.full((n_max,), height * width, dtype=torch.long, device=pixels.device)
        self.pixels[:self.count] = pixels


def light_buffer(lighting: bool, material: str, device: torch.device) -> Light:
    """A fixed buffer for sample_light's draws: what a CUDA graph reads the step's light from."""
    if not lighting:
        return None
    if material == "pbr":
        return EnvironmentLighting(environment_bank(device), torch.zeros(1, dtype=torch.long, device=device),
                                   torch.zeros(1, device=device), torch.zeros(1, device=device))
    return Lighting(torch.zeros(1, 3, device=device), torch.zeros(1, device=device), torch.zeros(1, device=device))


class StaticTextureStep:
    """The eager step's maths with fixed shapes and every per-step input in a fixed buffer.

    `options` (FastStepOptions) choose faster ways to compute the same values.
    """

    capturable = False

    def __init__(self, field: TextureField, prior: DiffusionPrior, views: ViewPool, cameras: Cameras,
                 embeddings: Tensor, config: TextureJobConfig | EditJobConfig, generator: torch.Generator,
                 device: torch.device, preservation: Preservation | None = None,
                 options: FastStepOptions | None = None):
        self.field, self.prior, self.views, self.cameras = field, prior, views, cameras
        self.embeddings, self.config, self.generator, self.device = embeddings, config, generator, device
        self.preservation = preservation
        self.options = options = options or FastStepOptions()
        cuda = device.type == "cuda"
        # PyTorch's own GroupNorm turns NHWC back into NCHW, so NHWC pays only with the Triton one.
        self.channels_last = cuda and options.channels_last and options.triton_group_norm and triton_available()
        if cuda:
            set_memory_format(prior_modules(prior), self.channels_last)
        self.streams = ([torch.cuda.Stream(device) for _ in getattr(prior, "controlnets", {})]
                        if options.overlap_controlnets and cuda else None)
        self.optimizer = make_optimizer(field, config.learning_rate, capturable=self.capturable)
        self.warnings: list[str] = []

        # The geometry is fixed: rasterise the whole pool now and pad every view to the largest.
        pool = [views.get(index) for index in range(len(views))]
        counts = [int(view.mask.sum()) for view, _ in pool]
        self.n_max = max(1, *counts)
        self.packed = [_PackedView(view, self.n_max, index if options.shuffle_points and cuda else None)
                       for index, (view, _) in enumerate(pool)]
        first_view, first_control = pool[0]
        self.height, self.width = first_view.mask.shape[-2:]

        # Static inputs: filled by load_inputs() before every step.
        self.points = torch.zeros(self.n_max, 3, device=device)
        self.pixels = torch.zeros(self.n_max, dtype=torch.long, device=device)
        self.normal = torch.zeros_like(first_view.normal)
        self.view_dir = torch.zeros_like(first_view.normal)
        self.mask = torch.zeros_like(first_view.mask)
        self.control = {key: torch.zeros_like(image) for key, image in first_control.items()}
        # A region job's view layer (blend weights, kept values); None for a whole-object job.
        first_layer = views.layer(0)
        self.layer = None if first_layer is None else RegionLayer(torch.zeros_like(first_layer.weight),
                                                                  torch.zeros_like(first_layer.kept))
        self.light = light_buffer(config.lighting, field.material, device)
        self.background = torch.zeros(1, 3, device=device)
        self.control_scale = torch.zeros((), device=device)
        self.w2 = torch.zeros((), device=device)
        self.timesteps = torch.zeros(1, dtype=torch.long, device=device)
        with torch.no_grad():  # the model input's shape, for the noise buffer
            input_shape = prior.images_to_model_input(torch.zeros(1, 3, self.height, self.width, device=device)).shape
        self.noise = torch.zeros(input_shape, device=device)

    def load_inputs(self, step: int, generator: torch.Generator | None = None) -> None:
        """Draw this step's random numbers in the eager step's order and fill the static buffers."""
        config, device = self.config, self.device
        generator = generator if generator is not None else self.generator
        index = int(torch.randint(len(self.cameras), (1,), generator=generator))
        view, control = self.views.get(index)
        packed = self.packed[index]
        self.points.copy_(packed.points)
        self.pixels.copy_(packed.pixels)
        self.normal.copy_(view.normal)
        self.view_dir.copy_(view_directions(view))
        self.mask.copy_(view.mask)
        for key, image in control.items():
            self.control[key].copy_(image)
        if self.layer is not None:
            layer = self.views.layer(index)
            self.layer.weight.copy_(layer.weight)
            self.layer.kept.copy_(layer.kept)
        light = sample_light(config.lighting, self.field.material, self.cameras.index([index]), generator, device)
        if light is not None:
            for item in dataclasses.fields(light):  # the tensors; an environment's bank is the buffer's own
                value = getattr(light, item.name)
                if torch.is_tensor(value):
                    getattr(self.light, item.name).copy_(value)
        self.background.copy_(sample_backgrounds(1, generator, device))
        timesteps, noise = sample_timesteps_and_noise(self.noise.shape, config.guidance.t_range_at(step),
                                                      self.prior.num_train_timesteps, generator, torch.device("cpu"))
        self.timesteps.copy_(timesteps)
        self.noise.copy_(noise)
        self.w2.fill_(config.guidance.w2_at(step))
        self.control_scale.fill_(config.prior.controlnet_scale_at(step))

    def render(self, field: TextureField) -> Tensor:
        """The shaded render (1, H, W, 3) of `field` in the loaded view, light and background."""
        values = field(self.points)
        flat = values.new_zeros(self.height * self.width + 1, field.channels).index_put((self.pixels,), values)
        image = flat[:-1].view(1, self.height, self.width, field.channels)  # the trash pixel is dropped
        return shade_values(blended(image, self.layer), self.normal, self.view_dir, self.mask, self.light,
                            self.background)

    def loss(self) -> Tensor:
        """The eager step's loss on the static inputs (same formulas, tensors for w2 and scale)."""
        with ExitStack() as stack:
            if self.options.triton_group_norm and self.device.type == "cuda":
                stack.enter_context(triton_group_norms(*prior_modules(self.prior)))
            if self.channels_last:
                stack.enter_context(nhwc_transformer_outputs(*prior_modules(self.prior)))
            if self.options.fused_elementwise and self.device.type == "cuda":
                stack.enter_context(fused_elementwise(*prior_modules(self.prior)))
            rgb, loss = self._distillation_loss()
        if self.preservation is not None:
            with torch.no_grad():
                reference = self.render(self.preservation.reference_field)
            loss = loss + self.preservation.weight * preservation_loss(rgb, reference, kept_share(self.layer))
        return loss

    def _distillation_loss(self) -> tuple[Tensor, Tensor]:
        """The render and score_distillation_loss's loss on it, through the same skeleton (distill)."""
        prior, embeddings, guidance, options = self.prior, self.embeddings, self.config.guidance, self.options
        with ExitStack() as stack:
            if options.vae_math_attention and self.device.type == "cuda":
                stack.enter_context(half_precision_math_attention())
            rgb = self.render(self.field)
            images = rgb.permute(0, 3, 1, 2)  # NHWC strides already
            if self.device.type == "cuda":
                # One layout for the whole VAE (not on the CPU, where it would change the convolutions'
                # rounding against the eager step).
                images = images.contiguous(memory_format=torch.channels_last if self.channels_last
                                           else torch.contiguous_format)
            x = prior.images_to_model_input(images)
        control = ControlImages(self.control, self.control_scale) if self.control else None
        around_prior_call = []
        if options.share_condition:  # batch 1: every prompt shares the view's condition image
            around_prior_call.append(shared_controlnet_condition(prior))
        if self.streams:
            around_prior_call.append(concurrent_controlnets(prior, self.streams))

        def direction(eps: list[Tensor]) -> Tensor:
            # Every prompt is predicted (no prompts_used): w2 is a tensor, w2 = 0 subtracts an exact zero.
            return guidance_direction(guidance, self.w2, eps[0], eps[1], eps[2] if len(eps) > 2 else None, self.noise)

        step = distill(prior, x, self.noise, self.timesteps, batch_embeddings(embeddings, x.shape[0]), direction,
                       control, around_prior_call)
        return rgb, step.loss

    def forward_backward_update(self) -> Tensor:
        loss = self.loss()
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(self, step: int) -> Tensor:
        self.load_inputs(step)
        self.optimizer.zero_grad(set_to_none=True)
        return self.forward_backward_update()


class GraphedTextureStep(StaticTextureStep):
    """StaticTextureStep captured once as a CUDA graph: forward, backward and Adam."""

    capturable = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.device.type != "cuda":
            raise ValueError("GraphedTextureStep needs a CUDA device")
        self.graph = torch.cuda.CUDAGraph()
        self.static_loss = self._capture()

    def _capture(self) -> Tensor:
        parameters = list(self.field.parameters())
        initial = [parameter.detach().clone() for parameter in parameters]
        # Warm-up and capture use their own random draws: the job's generator is untouched.
        self.load_inputs(0, torch.Generator().manual_seed(0))
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.optimizer.zero_grad(set_to_none=True)
                    self.forward_backward_update()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph
            with torch.cuda.graph(self.graph):
                static_loss = self.forward_backward_update()
        finally:
            # Capture only records; undo the warm-up so the job starts from the field's
            # initial values and fresh Adam state (zeroed in place: the graph holds these tensors).
            with torch.no_grad():
                for parameter, value in zip(parameters, initial):
                    parameter.copy_(value)
                for state in self.optimizer.state.values():
                    for value in state.values():
                        if torch.is_tensor(value):
                            value.zero_()
        return static_loss

    def __call__(self, step: int) -> Tensor:
        self.load_inputs(step)
        self.graph.replay()
        return self.static_loss.clone()


def make_texture_step(field: TextureField, prior: DiffusionPrior, views: ViewPool, cameras: Cameras,
                      embeddings: Tensor, config: TextureJobConfig | EditJobConfig, generator: torch.Generator,
                      device: torch.device, preservation: Preservation | None = None, mode: str = "auto"
                      ) -> EagerTextureStep | StaticTextureStep | GraphedTextureStep:
    """The texture (and edit) job's step: mode "auto" is graphed on CUDA and eager elsewhere.

    If the graph cannot be captured (an operation that is not capturable, say), "auto" tries
    once more without the optional kernels (FastStepOptions all off), then falls back to the
    eager step, and says why in the returned step's `warnings`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown texture step mode {mode!r}; use one of {MODES}")
    args = (field, prior, views, cameras, embeddings, config, generator, device, preservation)
    if mode == "eager" or (mode == "auto" and device.type != "cuda"):
        return EagerTextureStep(*args)
    if mode == "static":
        return StaticTextureStep(*args)
    if mode == "graphed":
        return GraphedTextureStep(*args)
    plain = FastStepOptions(**{name: False for name in FastStepOptions.__dataclass_fields__})
    reasons = []
    for options in (FastStepOptions(), plain):
        try:
            step = GraphedTextureStep(*args, options=options)
            step.warnings += [f"The CUDA-graph texture step ran without its optional kernels ({reasons[0]})."
                              ] if reasons else []
            return step
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            torch.cuda.synchronize(device)
            field.zero_grad(set_to_none=True)
            reasons.append(first_line(exc))
    step = EagerTextureStep(*args)
    step.warnings.append(f"The CUDA-graph texture step could not be captured ({reasons[-1]}); "
                         "using the slower eager step.")
    return step
