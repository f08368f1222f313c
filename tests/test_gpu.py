"""CUDA paths (bf16 autocast, sampling on the GPU); run only on a machine with a GPU.

`python -m pytest -m gpu` on a lent GPU machine; CI deselects them.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_diffusion_trains_in_bf16_and_samples_on_cuda_like_on_cpu() -> None:
    from augment.generators.base import SampleRequest
    from augment.generators.diffusion import ClassConditionalDiffusion, DiffusionConfig
    from augment.generators.diffusion_train import fit_diffusion

    config = DiffusionConfig(image_size=8, channels=1, num_classes=2, block_out_channels=(8, 16),
                             norm_num_groups=4, train_steps=4, batch_size=8, warmup_steps=1, bf16=True,
                             class_names=("a", "b"))
    images = np.zeros((16, 8, 8, 1), np.uint8)
    images[8:] = 255
    labels = np.array([0] * 8 + [1] * 8)
    state = fit_diffusion(images, labels, config, device="cuda")
    assert state.step == 4 and next(state.ema.parameters()).is_cuda
    pipeline = ClassConditionalDiffusion.from_config(config, state.ema)
    request = SampleRequest(labels=[0, 1], seeds=[1, 2], ids=["x", "y"])
    on_gpu = pipeline.sample(request, steps=3)
    on_cpu = pipeline.to("cpu").sample(request, steps=3)
    # Same initial noise (drawn on the CPU per seed); kernels differ, so compare loosely.
    for a, b in zip(on_gpu, on_cpu):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 8
