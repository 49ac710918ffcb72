"""The states of every random number generator a training run draws from, as plain tensors and numbers.

A state is a dict that ``torch.load(weights_only=True)`` reads back (no numpy arrays, no pickled objects):

=============  ==============================================================================
``python``     ``random``'s Mersenne Twister (``version``, ``state`` as an int64 tensor, ``gauss_next``)
``numpy``      ``np.random``'s global generator (``keys`` as an int64 tensor, ``pos``, ...)
``torch``      ``torch.get_rng_state()``: the CPU generator (dropout, MixUp, shuffling without a generator)
``cuda``       ``torch.cuda.get_rng_state_all()``, one per GPU; empty when CUDA was never initialised
``generators`` the states of the data loaders' own ``torch.Generator`` objects, in a fixed order
=============  ==============================================================================

>>> state = get_rng_state(loader_generators(learn.dls))
>>> torch.rand(3); set_rng_state(state, loader_generators(learn.dls)); torch.rand(3)  # the same numbers again
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "set_rng_state", "check_rng_state", "loader_generators"]


def loader_generators(loaders: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects of a DataLoaders' loaders (theirs, their samplers'), each once, in order.

    ``loaders`` is a DataLoaders, or one loader, or a list of loaders; anything without generators gives none.
    """
    items: Iterable[Any] = getattr(loaders, "loaders", None) or (
        loaders if isinstance(loaders, (list, tuple)) else [loaders]
    )
    found: list[torch.Generator] = []
    for dl in items:
        batch_sampler = getattr(dl, "batch_sampler", None)
        candidates = [
            getattr(dl, "generator", None),
            getattr(getattr(dl, "sampler", None), "generator", None),
            getattr(getattr(batch_sampler, "sampler", None), "generator", None),
        ]
        for g in candidates:
            if isinstance(g, torch.Generator) and all(g is not other for other in found):
                found.append(g)
    return found


def get_rng_state(generators: Sequence[torch.Generator] = ()) -> dict[str, Any]:
    """The state of python's, numpy's, torch's (CPU and CUDA) global generators and of ``generators``."""
    version, mt, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        # Reading CUDA's state would initialise CUDA: a process that never used it has nothing to restore.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "generators": [g.get_state() for g in generators],
    }


def set_rng_state(state: dict[str, Any], generators: Sequence[torch.Generator] = ()) -> None:
    """Put back what :func:`get_rng_state` returned; ``generators`` must be the same loaders' generators.

    What cannot be restored (another number of generators or GPUs) is refused before any generator changes.
    """
    check_rng_state(state, generators)
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    for g, s in zip(generators, state.get("generators") or [], strict=True):
        g.set_state(s.cpu())


def check_rng_state(state: dict[str, Any], generators: Sequence[torch.Generator] = ()) -> None:
    """Raise a ValueError when :func:`set_rng_state` could not put ``state`` back into ``generators`` and this
    machine's GPUs: it holds another number of data loader generators, or of GPUs."""
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) != torch.cuda.device_count():
        raise ValueError(
            f"The random state was saved with {len(cuda)} GPU(s) but this machine has "
            f"{torch.cuda.device_count()}: it cannot be restored exactly."
        )
    saved = state.get("generators") or []
    if len(saved) != len(generators):
        raise ValueError(
            f"The random state holds {len(saved)} data loader generator(s) but the data loaders now have "
            f"{len(generators)}: build the DataLoaders as in the run that was saved (same seed= argument)."
        )
