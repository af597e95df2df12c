import os

import pytest

# Nothing in the test suite may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_pixel_prior(tmp_path_factory):
    from tiny_models import make_tiny_pixel_prior

    return make_tiny_pixel_prior(tmp_path_factory.mktemp("models") / "tiny-if")


@pytest.fixture(scope="session")
def tiny_stable_diffusion(tmp_path_factory):
    from tiny_models import make_tiny_controlnet, make_tiny_stable_diffusion

    root = tmp_path_factory.mktemp("models")
    sd = make_tiny_stable_diffusion(root / "tiny-sd")
    controlnets = {"depth": make_tiny_controlnet(root / "cn-depth", sd, seed=1),
                   "canny": make_tiny_controlnet(root / "cn-canny", sd, seed=2)}
    return sd, controlnets


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory):
    """Tiny random models in every supported family's real folder layout (tests/model_folders.py)."""
    from model_folders import make_model_folders

    return make_model_folders(tmp_path_factory.mktemp("real-layout-models"))
