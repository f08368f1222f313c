"""CUDA paths (bf16 autocast, sampling on the GPU); run only on a machine with a GPU.

`python -m pytest -m gpu` on a lent GPU machine; CI deselects them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_diffusion_trains_in_bf16_and_samples_on_cuda_like_on_cpu() -> None:
    from augment.generators import trainer
    from augment.generators.base import SampleRequest
    from augment.generators.diffusion_family import DiffusionFamily, DiffusionFit
    from augment.generators.family import DataShape, TrainingData

    family = DiffusionFamily(DiffusionFit(block_out_channels=(8, 16), norm_num_groups=4, steps=4, batch_size=8,
                                          warmup_steps=1, bf16=True), DataShape(8, 1, ("a", "b")), seed=0)
    images = np.zeros((16, 8, 8, 1), np.uint8)
    images[8:] = 255
    labels = np.array([0] * 8 + [1] * 8)
    state = trainer.fit(family, TrainingData(images, labels), device="cuda")
    assert state.step == 4 and next(state.ema["unet"].parameters()).is_cuda
    pipeline = family.sampler(state)
    request = SampleRequest(labels=[0, 1], seeds=[1, 2], ids=["x", "y"])
    on_gpu = pipeline.sample(request, steps=3)
    on_cpu = pipeline.to("cpu").sample(request, steps=3)
    # Same initial noise (drawn on the CPU per seed); kernels differ, so compare loosely.
    for a, b in zip(on_gpu, on_cpu):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 8


def test_cgan_trains_resumes_and_grids_on_cuda(tmp_path: Path) -> None:
    """The cGAN's sampler keeps the EMA G on the GPU (grids mid-fit), and a fit stopped at
    step 2 resumes from its saved state on the GPU to (nearly: CUDA kernels need not be
    deterministic) the uninterrupted fit's weights."""
    from augment.generators import trainer
    from augment.generators.cgan_family import CGANFamily, CGANFit
    from augment.generators.family import DataShape, TrainingData

    fit = CGANFit(z_dim=8, g_channels=4, d_channels=4, batch_size=8, steps=4, diffaugment=("translation", "cutout"),
                  mode_seeking=1.0)
    shape = DataShape(8, 1, ("a", "b"))
    family, first_half = CGANFamily(fit, shape, seed=0), CGANFamily(fit.model_copy(update={"steps": 2}), shape, seed=0)
    rng = np.random.default_rng(0)
    data = TrainingData(rng.integers(0, 255, (16, 8, 8, 1), dtype=np.uint8), np.arange(16) % 2)
    straight = trainer.fit(family, data, device="cuda")
    folders = {"states": tmp_path / "states", "grids": tmp_path / "grids", "checkpoint_every": 2,
               "device": "cuda", "grid_kwargs": {"batch_size": 16}}
    trainer.run(first_half, data, model=tmp_path / "model2", **folders)
    resumed = trainer.run(family, data, model=tmp_path / "model", **folders)
    assert next(resumed.ema["generator"].parameters()).is_cuda  # grids did not move it
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    for key, value in straight.ema["generator"].state_dict().items():
        torch.testing.assert_close(resumed.ema["generator"].state_dict()[key], value, rtol=1e-4, atol=1e-5)
