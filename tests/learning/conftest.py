"""A mini zoo shared by the learning tests: the real builders, a recipe small enough for seconds."""

from __future__ import annotations

import pytest

from skillstore.training.sft import SFTConfig
from skillstore.zoo import ModelSpec, ZooRecipe

MINI_SPEC = dict(hidden=32, layers=2, heads=2, intermediate=64, max_positions=48)


def mini_recipe(seed: int = 0) -> ZooRecipe:
    return ZooRecipe(
        seed=seed, n_train=60, n_eval=16,
        target=ModelSpec(**MINI_SPEC,
                         train=SFTConfig(lr=3e-3, max_steps=20, batch_size=16, eval_every=10)),
        source=ModelSpec(**MINI_SPEC,
                         train=SFTConfig(lr=3e-3, max_steps=20, batch_size=16, eval_every=10)),
    )


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One torch thread: on a CPU shared with other jobs, tiny models train several times faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_recipe():
    """The mini recipe as a function of the seed."""
    return mini_recipe


@pytest.fixture(scope="session")
def mini_zoo(tmp_path_factory):
    from skillstore.zoo import build_zoo

    return build_zoo(tmp_path_factory.mktemp("home"), recipe=mini_recipe())
