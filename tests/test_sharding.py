"""sharding: putting each rank's share of the predictions back in dataset order (more in test_distributed.py)."""

from __future__ import annotations

from collections import namedtuple

import torch

from learnloop.sharding import interleave

Preds = namedtuple("Preds", "logits aux")


def test_interleave_keeps_dicts_and_namedtuples() -> None:
    even, odd = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 3.0])  # rank 0 held items 0, 2; rank 1 items 1, 3
    joined = interleave([{"logits": even}, {"logits": odd}])  # was ['logits', 'logits']: the dicts' keys
    assert isinstance(joined, dict) and joined["logits"].tolist() == [0.0, 1.0, 2.0, 3.0]
    named = interleave([Preds(even, [even]), Preds(odd, [odd])])  # was a TypeError
    assert type(named) is Preds and named.logits.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert isinstance(named.aux, list) and named.aux[0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert interleave([{"p": torch.tensor([5.0])}, None])["p"].tolist() == [5.0]  # a rank with nothing
