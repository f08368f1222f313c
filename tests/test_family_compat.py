"""Checkpoints saved before the family registry still load and sample as they did.

`tests/data/generators/` holds a tiny diffusion UNet and a tiny cGAN saved by the code of
commit 57aa84f (the cGAN's `config.json` is format 1), and `expected_samples.npz`, the
samples that code drew from them (see the README there). Loaded through today's families
and sampled the same way, they give byte-identical images on the machine that recorded
them. Other CPUs or BLAS builds may round a rare pixel the other way, so the test allows
at most 1 grey level of difference per pixel and asks for at least 99% identical pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from augment.generators.base import SampleRequest
from augment.generators.cgan_family import CGANFamily, CGANFit
from augment.generators.diffusion_family import DiffusionFamily
from augment.generators.family import DataShape

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as when the samples were recorded

DATA = Path(__file__).parent / "data" / "generators"
REQUEST = SampleRequest(labels=[0, 1, 2, 0, 1, 2], seeds=[11, 12, 13, 14, 15, 16], ids=[str(i) for i in range(6)])


@pytest.fixture(scope="module")
def expected() -> Iterator[dict[str, np.ndarray]]:
    with np.load(DATA / "expected_samples.npz") as npz:
        yield {key: npz[key] for key in npz.files}


def assert_close_images(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype == np.uint8 and got.shape == want.shape
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1, f"a pixel moved by {diff.max()} grey levels"
    assert (diff == 0).mean() >= 0.99, f"only {(diff == 0).mean():.2%} of pixels identical"


@pytest.mark.parametrize("key,kwargs", [
    ("diffusion_ddim", {"guidance": {0: 1.0, 1: 2.0, 2: 3.0}, "steps": 4, "scheduler": "ddim"}),
    ("diffusion_dpm", {"guidance": 2.0, "steps": 4, "scheduler": "dpm++"}),
    ("diffusion_ddpm", {"guidance": 0.5, "steps": 4, "scheduler": "ddpm"}),
])
def test_old_diffusion_checkpoint_samples_as_before(key: str, kwargs: dict, expected: dict[str, np.ndarray]) -> None:
    pipe = DiffusionFamily.from_pretrained(DATA / "diffusion")
    assert pipe.class_names == ("a", "b", "c")
    assert pipe.fit is None  # saved before the hyperparameters were recorded
    got = np.stack([s.image for s in pipe.sample(REQUEST, **kwargs)])
    assert_close_images(got, expected[key])


@pytest.mark.parametrize("key,truncation", [("cgan", None), ("cgan_trunc", 0.7)])
def test_old_cgan_checkpoint_samples_as_before(key: str, truncation: float | None,
                                               expected: dict[str, np.ndarray]) -> None:
    gan = CGANFamily.from_pretrained(DATA / "cgan")
    got = np.stack([s.image for s in gan.sample(REQUEST, truncation=truncation)])
    assert_close_images(got, expected[key])


def test_old_cgan_config_reads_as_fit_shape_and_seed() -> None:
    """Format 1 kept one dict (with `train_steps`); it maps onto CGANFit + DataShape + seed."""
    gan = CGANFamily.from_pretrained(DATA / "cgan")
    assert gan.fit == CGANFit(z_dim=8, g_channels=4, d_channels=4, batch_size=16, steps=6,
                              diffaugment=("translation",), mode_seeking=1.0)
    assert gan.shape == DataShape(8, 1, ("a", "b", "c")) and gan.seed == 3
