"""Seeding the whole data chain: patch sampling, every random transform, and DataLoader worker processes.

``monai.utils.set_determinism`` seeds the global generators but not a ``Compose``'s own random states.
MONAI's ``DataLoader`` reseeds the dataset's transforms from its ``generator`` (in the main process with
``num_workers=0``; with workers, its ``worker_init_fn`` seeds each worker from the per-worker seed that
torch derives from the same generator). Giving the sampler and the loader one generator seeded from the
task's seed makes the augmented batches a function of the seed alone, independent of how much of the
global torch random stream the network's initialisation or dropout consumed.

Example:
    >>> gen = data_generator(cfg.training.seed)
    >>> sampler = RandomSampler(ds, replacement=True, num_samples=n, generator=gen)
    >>> loader = monai.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=2, generator=gen)
"""

from __future__ import annotations

import torch

#: offset so the data stream differs from a ``torch.manual_seed(seed)`` used elsewhere
_DATA_STREAM = 7919


def data_generator(seed: int) -> torch.Generator:
    """A torch generator for the training sampler and DataLoader, seeded from the task's seed."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + _DATA_STREAM)
