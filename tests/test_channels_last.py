"""Running the prior's networks NHWC (engine/prior/channels_last.py) changes layouts, not results."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from engine.prior.fast.channels_last import nhwc_transformer_outputs, set_memory_format


@pytest.mark.parametrize("linear_projection", [False, True])  # SD 1.x and SD 2.x blocks
def test_nhwc_transformer_outputs_keep_the_unets_result(linear_projection):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                attention_head_dim=4, use_linear_projection=linear_projection,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    sample, text = torch.randn(3, 4, 8, 8), torch.randn(3, 5, 16)
    timesteps = torch.tensor([10, 500, 990])
    with torch.no_grad():
        reference = unet(sample, timesteps, encoder_hidden_states=text).sample
        set_memory_format([unet], True)
        blocks = [m for m in unet.modules() if type(m).__name__ == "Transformer2DModel"]
        outputs = []
        hooks = [block.register_forward_hook(lambda module, args, result: outputs.append(result[0]))
                 for block in blocks]
        with nhwc_transformer_outputs(unet):
            assert all("_get_output_for_continuous_inputs" in block.__dict__ for block in blocks)
            nhwc = unet(sample.contiguous(memory_format=torch.channels_last), timesteps,
                        encoder_hidden_states=text).sample
        for hook in hooks:
            hook.remove()
    assert blocks and all("_get_output_for_continuous_inputs" not in block.__dict__ for block in blocks)
    # Each block's output stays NHWC instead of being copied into NCHW.
    assert all(output.is_contiguous(memory_format=torch.channels_last) and not output.is_contiguous()
               for output in outputs)
    torch.testing.assert_close(nhwc, reference, rtol=1e-4, atol=1e-5)
