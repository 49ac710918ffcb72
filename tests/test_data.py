"""DataLoaders: wrapping torch DataLoaders and plain iterables, the helpers, devices, unshuffled loaders."""

from __future__ import annotations

import copy
import pickle
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
)
from torch.utils.data.distributed import DistributedSampler

from learnloop import DataLoaders, Learner, default_device
from learnloop.callback import noop
from learnloop.data import DeviceUnavailableError, to_detach, to_device, unshuffled
from learnloop.errors import ArgumentError, InputError


def _ds(n: int = 20) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 2, generator=g), torch.randn(n, 1, generator=g))


def test_wraps_plain_torch_dataloaders() -> None:
    train, valid = DataLoader(_ds(), batch_size=4), DataLoader(_ds(8), batch_size=4)
    dls = DataLoaders(train, valid, device="cpu", n_inp=1)
    assert dls.train is train and dls.valid is valid and dls[0] is train and dls[1] is valid
    assert dls.train_ds is train.dataset and dls.valid_ds is valid.dataset
    assert dls.device == torch.device("cpu") and dls.n_inp == 1 and len(dls) == 2
    assert "DataLoader(5 batches)" in repr(dls)


def test_one_batch_is_the_first_batch_on_the_device() -> None:
    ds = _ds()
    dls = DataLoaders(DataLoader(ds, batch_size=4), [(torch.ones(2, 2), torch.zeros(2, 1))], device="meta")
    xb, yb = dls.one_batch()  # fastai's dls.one_batch(): the training loader's first batch, where the model is
    assert xb.device.type == "meta" and xb.shape == (4, 2) and yb.shape == (4, 1)
    assert dls.one_batch(1)[0].device.type == "meta" and dls.one_batch(1)[0].shape == (2, 2)
    cpu = DataLoaders(DataLoader(ds, batch_size=4), device="cpu")
    assert torch.equal(cpu.one_batch()[0], ds.tensors[0][:4])
    with pytest.raises(ValueError, match="The validation loader does not contain any batches"):
        cpu.one_batch(1)
    with pytest.raises(ValueError, match="The training loader does not contain any batches"):
        DataLoaders([], device="cpu").one_batch()


def test_default_device_and_no_validation_set() -> None:
    dls = DataLoaders(DataLoader(_ds(), batch_size=4))
    assert dls.device == default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert list(dls.valid) == [] and dls.n_inp is None and dls.valid_ds is None


def test_a_learner_trains_on_plain_lists_of_batches() -> None:
    ds = _ds(12)
    batches = [(ds.tensors[0][i:i + 4], ds.tensors[1][i:i + 4]) for i in range(0, 12, 4)]
    learn = Learner(DataLoaders(batches, batches[:1], device="cpu"), nn.Linear(2, 1), loss_func=nn.MSELoss())
    learn.logger = noop
    learn.fit(2)
    assert len(learn.recorder.losses) == 6 and len(learn.recorder.values) == 2


def test_a_learner_trains_without_a_validation_set() -> None:
    learn = Learner(DataLoaders(DataLoader(_ds(), batch_size=5), device="cpu"), nn.Linear(2, 1),
                    loss_func=nn.MSELoss())
    learn.logger = noop
    learn.fit(1)
    train_loss, valid_loss = learn.recorder.values[0]
    assert isinstance(train_loss, float) and valid_loss is None


def test_a_tuple_of_loaders_is_accepted_as_dls() -> None:
    train, valid = DataLoader(_ds(), batch_size=4), DataLoader(_ds(8), batch_size=4)
    learn = Learner((train, valid), nn.Linear(2, 1), loss_func=nn.MSELoss())
    assert isinstance(learn.dls, DataLoaders) and learn.dls.train is train and learn.dls.valid is valid
    learn.logger = noop
    learn.fit(1)
    assert len(learn.recorder.losses) == 5


def test_from_dsets() -> None:
    dls = DataLoaders.from_dsets(_ds(20), _ds(10), bs=8, device="cpu", n_inp=1, seed=1)
    assert isinstance(dls.train, DataLoader) and isinstance(dls.valid, DataLoader)
    assert dls.train.batch_size == 8 and dls.train.drop_last and len(dls.train) == 2
    assert not isinstance(dls.train.sampler, SequentialSampler)
    assert isinstance(dls.valid.sampler, SequentialSampler) and not dls.valid.drop_last and len(dls.valid) == 2
    assert dls.n_inp == 1 and dls.device == torch.device("cpu")
    again = DataLoaders.from_dsets(_ds(20), _ds(10), bs=8, seed=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(dls.train, again.train, strict=True))  # seeded shuffle
    plain = DataLoaders.from_dsets(_ds(20), bs=8, shuffle=False, valid_bs=3)
    assert not plain.train.drop_last and len(plain.train) == 3 and plain.loaders[1] is None


def test_from_dsets_valid_bs() -> None:
    dls = DataLoaders.from_dsets(_ds(20), _ds(10), bs=8, valid_bs=5)
    assert dls.valid.batch_size == 5


def test_from_dsets_rejects_a_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="bs must be a positive"):
        DataLoaders.from_dsets(_ds(), bs=0)
    with pytest.raises(ValueError, match=r"valid_bs must be a positive .* got 0"):  # was bs, silently
        DataLoaders.from_dsets(_ds(), _ds(), bs=4, valid_bs=0)


def test_from_dsets_gives_the_training_order_to_the_training_loader_only() -> None:
    valid = _ds(20)
    dls = DataLoaders.from_dsets(_ds(10), valid, bs=4, shuffle=False, sampler=SubsetRandomSampler(range(5)))
    assert sum(len(xb) for xb, _ in dls.train) == 5  # the sampler's items
    assert isinstance(dls.valid.sampler, SequentialSampler)  # every validation item, not the sampler's five
    assert torch.equal(torch.cat([xb for xb, _ in dls.valid]), valid.tensors[0])
    generator = torch.Generator().manual_seed(3)
    dls = DataLoaders.from_dsets(_ds(10), valid, bs=4, generator=generator)  # was a TypeError: generator twice
    assert dls.train.generator is generator and dls.valid.generator is None
    with pytest.raises(ArgumentError, match=r"seed=1 and a generator both set the training order"):
        DataLoaders.from_dsets(_ds(10), bs=4, seed=1, generator=generator)
    # numpy integers, which torch's BatchSampler ("batch_size should be a positive integer value, but got
    # batch_size=8") and Generator.manual_seed refuse: made Python ints
    numpy = DataLoaders.from_dsets(_ds(20), _ds(10), bs=np.int64(8), valid_bs=np.int32(5), seed=np.int64(1))
    assert (numpy.train.batch_size, numpy.valid.batch_size, len(numpy.valid)) == (8, 5, 2)
    with pytest.raises(ArgumentError, match=r"from_dsets: seed is the training order's random seed, an int; got '1'"):
        DataLoaders.from_dsets(_ds(10), bs=4, seed="1")
    # dls[1.0] was the validation loader (1.0 == 1), so Interpretation.from_learner(learn, ds_idx=1.0) ran; fastai's
    # list of loaders refuses a float index with a TypeError, as get_preds(ds_idx=1.0) does here
    with pytest.raises(TypeError, match=r"DataLoaders indices are whole numbers .*got 1.0"):
        numpy[1.0]  # type: ignore[index]
    assert numpy[np.int64(1)] is numpy.valid and numpy[True] is numpy.valid


def test_from_dsets_takes_a_batch_sampler_for_the_training_batches() -> None:
    # torch refuses batch_size, shuffle and drop_last beside it: from_dsets always gave them, a ValueError
    batches = BatchSampler(SequentialSampler(range(10)), 3, drop_last=False)
    dls = DataLoaders.from_dsets(_ds(10), _ds(10), bs=4, batch_sampler=batches)
    assert [len(xb) for xb, _ in dls.train] == [3, 3, 3, 1] and [len(xb) for xb, _ in dls.valid] == [4, 4, 2]


def test_from_dsets_takes_a_sampler_with_the_default_shuffle() -> None:
    # torch refuses shuffle=True beside a sampler: the default shuffle made sampler= a ValueError unless shuffle=False
    dls = DataLoaders.from_dsets(_ds(10), _ds(10), bs=4, sampler=SubsetRandomSampler(range(5)))
    assert [len(xb) for xb, _ in dls.train] == [4]  # the sampler's 5 items; the last partial batch dropped, as shuffled
    assert DataLoaders.from_dsets(_ds(10), bs=4, sampler=range(10), drop_last=False).train.sampler == range(10)


def test_from_dsets_says_an_iterable_dataset_cannot_be_shuffled() -> None:
    # torch's "expected unspecified shuffle option, but got shuffle=True" named a shuffle the caller had not written
    class Stream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
        def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return iter(_ds(6))

    with pytest.raises(ValueError, match=r"train_ds is an IterableDataset \(Stream\).* Pass shuffle=False"):
        DataLoaders.from_dsets(Stream(), Stream(), bs=4)
    dls = DataLoaders.from_dsets(Stream(), Stream(), bs=4, shuffle=False)
    assert [len(xb) for xb, _ in dls.train] == [4, 2] and [len(xb) for xb, _ in dls.valid] == [4, 2]


def test_from_dsets_takes_torchs_batch_size_for_bs() -> None:
    # fastai takes batch_size (PyTorch's name) for bs; torch got it twice: "got multiple values for ... 'batch_size'"
    dls = DataLoaders.from_dsets(_ds(10), _ds(10), batch_size=4, shuffle=False)
    assert [len(xb) for xb, _ in dls.train] == [4, 4, 2] and [len(xb) for xb, _ in dls.valid] == [4, 4, 2]
    assert dls.bs == 4 and DataLoaders.from_tensors(*_ds(6).tensors, bs=8, batch_size=None).bs == 8


def test_from_tensors() -> None:
    x, y = torch.randn(10, 3), torch.randn(10)
    dls = DataLoaders.from_tensors(x, y, x[:4], y[:4], bs=5, shuffle=False)
    xb, yb = next(iter(dls.train))
    assert torch.equal(xb, x[:5]) and torch.equal(yb, y[:5])
    assert torch.equal(dls.valid_ds.tensors[0], x[:4])
    assert list(DataLoaders.from_tensors(x, y, bs=5).valid) == []


def test_from_tensors_names_tensors_of_different_lengths() -> None:
    x, y = torch.randn(24, 4), torch.randint(0, 2, (24,))
    # torch's own check is a bare "Size mismatch between tensors"; the type stays an AssertionError
    with pytest.raises(InputError, match=r"x_train has 24 rows but y_train has 10") as info:
        DataLoaders.from_tensors(x, y[:10], bs=8)
    assert isinstance(info.value, AssertionError)
    with pytest.raises(InputError, match=r"x_valid has 8 rows but y_valid has 3"):
        DataLoaders.from_tensors(x, y, x[:8], y[:3], bs=8)
    with pytest.raises(ArgumentError, match=r"y_train must be a torch tensor, got list.*torch.as_tensor"):
        DataLoaders.from_tensors(x, y.tolist(), bs=8)  # type: ignore[arg-type]
    # half a validation set was dropped without a word
    with pytest.raises(ArgumentError, match=r"x_valid is given but y_valid is None; pass both"):
        DataLoaders.from_tensors(x, y, x[:8], bs=8)
    with pytest.raises(ArgumentError, match=r"y_valid is given but x_valid is None"):
        DataLoaders.from_tensors(x, y, y_valid=y[:8], bs=8)


def test_from_tensors_and_from_dsets_refuse_an_empty_training_set_to_shuffle() -> None:
    x, y = torch.randn(0, 4), torch.zeros(0)
    with pytest.raises(InputError, match="train_ds has no items"):  # torch: "num_samples should be a positive ..."
        DataLoaders.from_tensors(x, y, bs=8)
    with pytest.raises(InputError, match="train_ds has no items"):
        DataLoaders.from_dsets(TensorDataset(x, y), bs=8)
    assert list(DataLoaders.from_tensors(x, y, bs=8, shuffle=False).train) == []  # as torch: not shuffled, allowed


def test_a_cuda_device_without_cuda_is_refused_when_the_dataloaders_are_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # torch raises an AssertionError (CPU-only build) or a RuntimeError (no GPU or driver) at the first batch
    for device in ("cuda", torch.device("cuda:1")):
        with pytest.raises(DeviceUnavailableError, match="DataLoaders: device 'cuda.*no CUDA device.*use 'cpu'"):
            DataLoaders([], device=device)
    assert issubclass(DeviceUnavailableError, RuntimeError) and issubclass(DeviceUnavailableError, AssertionError)
    assert DataLoaders([], device="meta").device == torch.device("meta")  # only CUDA is checked


def test_to_cpu_and_cuda_set_the_device_and_return_the_dataloaders(monkeypatch: pytest.MonkeyPatch) -> None:
    import learnloop.data as data_module

    dls = DataLoaders(DataLoader(_ds(), batch_size=4), device="cpu")
    assert dls.to("meta") is dls and dls.device == torch.device("meta")  # fastai's: returns the DataLoaders
    assert dls.one_batch()[0].device.type == "meta"
    assert dls.cpu() is dls and dls.device == torch.device("cpu") and dls.one_batch()[0].is_cpu
    monkeypatch.setattr(data_module, "_use_cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dls.cuda() is dls and dls.device == torch.device("cuda")
    default_device(False)  # fastai's cuda() is to(default_device()): the CPU when CUDA is switched off
    assert dls.cuda().device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    default_device(None)
    assert dls.cuda().device == torch.device("cpu")  # no CUDA: the CPU, as fastai's
    with pytest.raises(DeviceUnavailableError, match="DataLoaders.to: device 'cuda:0', but this machine has no CUDA"):
        dls.to("cuda:0")
    assert dls.device == torch.device("cpu")  # the refused call changed nothing


def test_assigning_the_device_takes_a_string_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    dls = DataLoaders(DataLoader(_ds(), batch_size=4), device="cpu")
    dls.device = "meta"  # fastai's `dls.device = ...`; the string was kept, and the fit failed on `device.type`
    assert dls.device == torch.device("meta") and dls.one_batch()[0].device.type == "meta"
    learn = Learner(dls, nn.Linear(2, 1), loss_func=nn.MSELoss())
    dls.device = "cpu"
    learn.logger = noop
    learn.fit(1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="DataLoaders.device: device 'cuda', but this machine has no"):
        dls.device = "cuda"
    assert dls.device == torch.device("cpu") and pickle.loads(pickle.dumps(dls)).device == torch.device("cpu")


def test_a_subclass_that_sets_no_device_reads_it_from_the_training_loader() -> None:
    # As before `device` became a property: the loop's getattr(dls, "device", None) got a KeyError from it.
    class Own(DataLoaders):
        def __init__(self, train: Any) -> None:
            self.loaders, self.n_inp = [train, None], None

    dls = Own(DataLoader(_ds(), batch_size=4))
    assert getattr(dls, "device", None) is None
    learn = Learner(dls, nn.Linear(2, 1), loss_func=nn.MSELoss())
    learn.logger = noop
    learn.fit(1)
    dls.train.device = "cpu"  # type: ignore[attr-defined]
    assert dls.device == "cpu"


@pytest.mark.parametrize("n_inp", ["1", 1.0, True])
def test_n_inp_that_is_not_a_whole_number_is_refused(n_inp: Any) -> None:
    with pytest.raises(ArgumentError, match="DataLoaders: n_inp"):
        DataLoaders([], device="cpu", n_inp=n_inp)


def test_n_inp_below_one_is_refused() -> None:
    with pytest.raises(InputError, match="DataLoaders: n_inp is the number of inputs per batch.*got 0"):
        DataLoaders([], device="cpu", n_inp=0)
    assert DataLoaders([], device="cpu", n_inp=torch.tensor(2)).n_inp == 2


def test_dataloaders_read_what_they_lack_from_the_training_loader() -> None:
    train = DataLoader(_ds(), batch_size=6)
    dls = DataLoaders(train, DataLoader(_ds(), batch_size=4), path="data")
    assert dls.bs == 6 and dls.batch_size == 6 and dls.dataset is train.dataset  # fastai's `self.dls.bs`
    assert dls.path == Path("data")
    with pytest.raises(AttributeError, match="'DataLoaders' object has no attribute 'vocab', nor has its training "
                                             r"loader \(DataLoader\)"):
        dls.vocab  # noqa: B018
    assert getattr(dls, "vocab", None) is None
    assert DataLoaders([(torch.ones(2), torch.ones(2))]).bs is None  # a list of batches has no batch size
    copied = pickle.loads(pickle.dumps(dls))
    assert copied.bs == 6 and copied.path == Path("data") and copy.deepcopy(dls).bs == 6


def test_train_and_valid_can_be_replaced_as_in_fastai() -> None:
    dls = DataLoaders(DataLoader(_ds(), batch_size=4), device="cpu")
    train, valid = DataLoader(_ds(), batch_size=2), DataLoader(_ds(8), batch_size=3)
    dls.train, dls.valid = train, valid  # fastai's DataLoaders take both
    assert dls.train is dls[0] is train and dls.valid is dls[1] is valid and dls.bs == 2
    dls.valid = None
    assert dls.valid == [] and dls.valid_ds is None


class _Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        return iter([(torch.ones(2), torch.ones(1))])


def test_repr_of_a_loader_whose_length_is_unknown() -> None:
    # A torch DataLoader has __len__ even over an IterableDataset without one; len() then raises TypeError.
    dls = DataLoaders(DataLoader(_Stream(), batch_size=4), [(torch.ones(2), torch.ones(2))], device="cpu")
    assert repr(dls) == "DataLoaders(train=DataLoader(? batches), valid=list(1 batches), device=cpu)"


def test_a_validation_loader_whose_length_is_unknown_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    # fastai fails on it with torch's TypeError ("object of type '_Stream' has no len()")
    train = DataLoader(TensorDataset(torch.ones(4, 2), torch.ones(4, 1)), batch_size=2)
    learn = Learner(DataLoaders(train, DataLoader(_Stream(), batch_size=4), device="cpu"), nn.Linear(2, 1),
                    loss_func=nn.MSELoss())
    learn.fit(1)
    [[_, valid_loss]] = learn.recorder.values
    with learn.no_bar():
        assert learn.validate() == [pytest.approx(valid_loss)]
    learn.progress.bars = True  # a bar without a total
    assert learn.validate() == [pytest.approx(valid_loss)]


def test_to_device_moves_nested_batches() -> None:
    # Moving to the meta device is cheap and shows the move on a CPU-only machine.
    meta = torch.device("meta")
    b = (torch.ones(2), [torch.zeros(1), {"k": torch.ones(3)}], "label", 3)
    moved = to_device(b, meta)
    assert isinstance(moved, tuple) and isinstance(moved[1], list)
    assert moved[0].device == meta and moved[1][0].device == meta and moved[1][1]["k"].device == meta
    assert moved[2:] == ("label", 3)


def test_to_device_waits_for_copies_to_the_cpu() -> None:
    # A batch on a GPU given to DataLoaders on the CPU: a non-blocking copy could be read before it has landed. A
    # tensor standing in for a GPU one records how it is copied.
    copies: list[tuple[torch.device, bool]] = []

    class OnAccelerator(torch.Tensor):
        @property
        def is_cpu(self) -> bool:  # type: ignore[override]
            return False

        def to(self, device: Any, non_blocking: bool = False) -> torch.Tensor:  # type: ignore[override]
            copies.append((torch.device(device), non_blocking))
            return self.as_subclass(torch.Tensor)

    gpu_like = torch.ones(2).as_subclass(OnAccelerator)
    to_device((gpu_like, [gpu_like]), torch.device("cpu"))
    to_device(gpu_like, torch.device("meta"))
    assert copies == [(torch.device("cpu"), False)] * 2 + [(torch.device("meta"), True)]


def test_to_device_and_to_detach_keep_a_namedtuple_batch() -> None:
    Batch = namedtuple("Batch", "x y")
    b = Batch(torch.ones(2, requires_grad=True) * 2, torch.zeros(2))
    moved = to_device(b, torch.device("meta"))
    assert type(moved) is Batch and moved.x.device.type == "meta" and moved.y.device.type == "meta"
    detached = to_detach(b)
    assert type(detached) is Batch and not detached.x.requires_grad and detached.x.tolist() == [2.0, 2.0]


def test_unshuffled() -> None:
    sequential = DataLoader(_ds(), batch_size=6)
    assert unshuffled(sequential) is sequential
    shuffled = DataLoader(_ds(), batch_size=6, shuffle=True, drop_last=True)
    fixed = unshuffled(shuffled)
    assert isinstance(fixed, DataLoader) and not fixed.drop_last and fixed.batch_size == 6
    assert torch.equal(torch.cat([xb for xb, _ in fixed]), _ds().tensors[0])
    batches = [1, 2, 3]
    assert unshuffled(batches) is batches


@pytest.mark.parametrize(
    "make",
    [
        lambda ds: DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds), 4, drop_last=True)),
        lambda ds: DataLoader(ds, batch_size=None, shuffle=True),  # automatic batching off: items are batches
        lambda ds: DataLoader(ds, batch_size=4, shuffle=True, num_workers=1, worker_init_fn=_noop, timeout=30),
    ],
)
def test_unshuffled_reads_a_shuffling_batch_sampler_in_order(make: Any) -> None:
    ds = _ds(10)
    dl = make(ds)
    fixed = unshuffled(dl)
    assert fixed is not dl and isinstance(fixed, DataLoader)
    xs = torch.cat([xb.reshape(-1, 2) for xb, _ in fixed])
    assert torch.equal(xs, ds.tensors[0])
    assert fixed.worker_init_fn is dl.worker_init_fn and fixed.timeout == dl.timeout
    if dl.batch_size is not None or isinstance(dl.batch_sampler, BatchSampler):
        assert fixed.batch_size == 4 and not fixed.drop_last


class _Doubling(DataLoader):  # type: ignore[type-arg]
    """A DataLoader subclass with an __iter__ of its own (the inputs times `factor`) and an attribute set later."""

    def __init__(self, dataset: Any, factor: float = 1.0, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.factor = factor

    def __iter__(self) -> Any:
        for xb, yb in super().__iter__():
            yield xb * self.factor * self.extra, yb


def test_unshuffled_makes_a_data_loader_subclass_again_as_itself() -> None:
    # It was made again as a plain DataLoader: get_preds(ds_idx=0) read the inputs without the subclass's __iter__.
    ds = _ds(10)
    dl = _Doubling(ds, factor=2.0, batch_size=4, shuffle=True, drop_last=True)
    dl.extra = 3.0
    fixed = unshuffled(dl)
    assert type(fixed) is _Doubling and fixed.factor == 2.0 and not fixed.drop_last
    assert torch.equal(torch.cat([xb for xb, _ in fixed]), ds.tensors[0] * 6)

    class Required(_Doubling):
        def __init__(self, dataset: Any, factor: float, **kwargs: Any) -> None:
            super().__init__(dataset, factor, **kwargs)

    # One whose own arguments have no default cannot be made again: read by a plain DataLoader, and warned of
    with pytest.warns(UserWarning, match=r"DataLoader is a .*Required, whose __init__ does not take DataLoader's "
                                         r"arguments \(missing a required argument: 'factor'\).*plain DataLoader"):
        plain = unshuffled(Required(ds, 2.0, batch_size=4, shuffle=True))
    assert type(plain) is DataLoader and torch.equal(torch.cat([xb for xb, _ in plain]), ds.tensors[0])


def test_unshuffled_leaves_a_custom_batch_sampler_alone() -> None:
    by_length = DataLoader(_ds(6), batch_sampler=[[5, 4], [3, 2, 1, 0]])  # its own order and sizes
    assert unshuffled(by_length) is by_length


def test_unshuffled_reads_only_the_items_a_subset_sampler_picks() -> None:
    # The torch way of splitting one dataset: a SubsetRandomSampler per loader. Reading "the dataset in order" there
    # gave get_preds() every item, the training ones included.
    ds = _ds(10)
    valid = DataLoader(ds, batch_size=3, sampler=SubsetRandomSampler([7, 2, 9, 4]))
    fixed = unshuffled(valid)
    assert torch.equal(torch.cat([xb for xb, _ in fixed]), ds.tensors[0][[7, 2, 9, 4]])
    assert [len(xb) for xb, _ in fixed] == [3, 1] and fixed.dataset[0][0].equal(ds.tensors[0][7])
    learn = Learner(DataLoaders(valid, valid, device="cpu"), nn.Linear(2, 1), loss_func=nn.MSELoss())
    preds, targs = learn.get_preds()
    assert len(preds) == 4 and torch.equal(targs, ds.tensors[1][[7, 2, 9, 4]])


def test_unshuffled_keeps_the_items_of_a_sampler_of_its_own() -> None:
    ds = _ds(10)
    as_indices = DataLoader(ds, batch_size=2, sampler=[5, 1, 3])  # any iterable of indices is a sampler
    assert unshuffled(as_indices) is as_indices
    dropping = DataLoader(ds, batch_size=2, sampler=[5, 1, 3], drop_last=True)
    fixed = unshuffled(dropping)
    assert torch.equal(torch.cat([xb for xb, _ in fixed]), ds.tensors[0][[5, 1, 3]])
    # A distributed sampler's share is still read as the whole dataset in order (a DistributedTrainer shards it).
    shared = DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, num_replicas=2, rank=1))
    assert torch.equal(torch.cat([xb for xb, _ in unshuffled(shared)]), ds.tensors[0])


def _noop(worker_id: int) -> None:
    pass


def test_training_data_without_a_length_is_refused_clearly() -> None:
    ds = _ds(8)
    gen = ((ds.tensors[0][i:i + 4], ds.tensors[1][i:i + 4]) for i in (0, 4))
    learn = Learner(DataLoaders(gen, device="cpu"), nn.Linear(2, 1), loss_func=nn.MSELoss())
    with pytest.raises(TypeError, match="training data.*has no length.*__len__"):
        learn.fit(1)
    learn = Learner(DataLoaders(None, device="cpu"), nn.Linear(2, 1), loss_func=nn.MSELoss())
    with pytest.raises(TypeError, match=r"The DataLoaders has no training loader \(None\): give it one"):
        learn.fit(1)  # fastai: "object of type 'NoneType' has no len()"


def test_default_device_use_sets_the_default_for_what_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    import learnloop.data as data_module

    monkeypatch.setattr(data_module, "_use_cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with a GPU
    assert default_device() == torch.device("cuda")
    assert default_device(False) == torch.device("cpu")  # fastai's way to keep everything on the CPU
    assert default_device() == DataLoaders([]).device == torch.device("cpu")  # -1, the default, reads the setting
    assert DataLoaders([], device="cuda").device == torch.device("cuda")  # an explicit device still wins
    assert default_device(None) == default_device() == torch.device("cuda")  # back to automatic
    assert default_device(0) == torch.device("cpu")
    assert default_device(1) == default_device(True) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device(True) == torch.device("cpu")  # True without CUDA: the CPU, as fastai's
    with pytest.raises(TypeError, match=r"default_device\(use='cpu'\): use is True .*pass it device="):
        default_device("cpu")  # type: ignore[arg-type]
    assert default_device() == torch.device("cpu") and data_module._use_cuda is True  # the bad call changed nothing


def test_a_negative_index_counts_from_the_end_as_the_positive_one_reads() -> None:
    ds = _ds(8)
    no_valid = DataLoaders(DataLoader(ds, batch_size=4), device="cpu")
    assert no_valid[-1] == [] and no_valid[-2] is no_valid.train  # dls[-1] was the None the valid slot holds
    assert no_valid[np.int64(-1)] == [] and no_valid[np.int64(-2)] is no_valid.train  # np.int64(-1) was that None
    learn = Learner(no_valid, nn.Linear(2, 1), loss_func=nn.MSELoss())
    learn.logger = noop
    assert learn.validate(ds_idx=-1) == learn.validate(ds_idx=1) == [None]


def test_more_loaders_follow_the_validation_one_as_in_fastai() -> None:
    # fastai's DataLoaders(*loaders): DataLoaders(train, valid, test) was a TypeError (two loaders at most).
    train, valid, test = (DataLoader(_ds(n), batch_size=4) for n in (8, 8, 6))
    dls = DataLoaders(train, valid, test, device="cpu")
    assert len(dls) == 3 and dls[2] is test and dls[-1] is test and dls.valid is valid
    assert repr(dls) == (
        "DataLoaders(train=DataLoader(2 batches), valid=DataLoader(2 batches), DataLoader(2 batches), device=cpu)"
    )
    learn = Learner(dls, nn.Linear(2, 1), loss_func=nn.MSELoss())
    learn.logger = noop
    x, y = test.dataset.tensors
    preds, targs = learn.get_preds(ds_idx=2)
    assert torch.equal(targs, y) and preds.shape == (6, 1)
    [loss] = learn.validate(ds_idx=2)
    assert loss == pytest.approx(nn.functional.mse_loss(preds, y).item(), rel=1e-5)
    assert len(Learner([train, valid, test], nn.Linear(2, 1), loss_func=nn.MSELoss()).dls) == 3


@pytest.mark.parametrize("bs", ["8", 2.5, None])
def test_a_batch_size_that_is_not_a_whole_number_says_so(bs: Any) -> None:
    # fastai's loader fails on bs="8" with a ValueError, torch's on 2.5 with a TypeError: the error is both.
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    for kwargs in ({"bs": bs}, {"valid_bs": bs}):
        if kwargs.get("valid_bs", 0) is None:
            continue  # valid_bs=None is bs
        with pytest.raises(ValueError, match=r"bs must be a positive number of items per batch.*got") as info:
            DataLoaders.from_tensors(x, y, x, y, **kwargs)
        assert isinstance(info.value, TypeError)
