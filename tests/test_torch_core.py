"""fastai's torch_core helpers (learnloop.torch_core and learnloop.nested), against values worked out by hand or
with numpy, python's random and torch's own functions."""

from __future__ import annotations

import copy
import io
import random
from collections import OrderedDict, UserDict, namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import learnloop.torch_core as tc
from learnloop import data, metrics, params
from learnloop.errors import ArgumentError
from learnloop.nested import map_tensors
from learnloop.torch_core import (
    Module,
    apply,
    batch_to_samples,
    concat,
    distrib_barrier,
    find_device,
    get_first,
    get_model,
    get_random_states,
    item_find,
    logit,
    maybe_gather,
    no_random,
    norm_types,
    np_func,
    num_distrib,
    one_hot,
    one_hot_decode,
    one_param,
    rank_distrib,
    set_random_states,
    set_seed,
    tensor,
    to_concat,
    to_cpu,
    to_device,
    to_float,
    to_half,
    to_np,
    unsqueeze,
    unsqueeze_,
)

Pair = namedtuple("Pair", "x y")


@pytest.fixture(autouse=True)
def cudnn_flags() -> Iterator[None]:
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags


def draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(2).tolist()


def seeded_draws(s: int) -> tuple[float, float, list[float]]:
    """What the three generators give first after seeding with `s`, from independent generators."""
    g = torch.Generator().manual_seed(s)
    numpy_first = float(np.random.RandomState(s % (2**32 - 1)).rand())
    return random.Random(s).random(), numpy_first, torch.rand(2, generator=g).tolist()


def same(a: torch.Tensor, dtype: torch.dtype, values: list[Any]) -> bool:
    return isinstance(a, torch.Tensor) and a.dtype == dtype and a.tolist() == values


# ------------------------------------------------------------------ random states
@pytest.mark.parametrize("s", [0, 7, 2**32 - 1, 2**40])
def test_set_seed_seeds_python_numpy_and_torch(s: int) -> None:
    set_seed(s)
    assert draws() == seeded_draws(s)


def test_set_seed_sets_cudnn_flags_only_when_reproducible() -> None:
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    set_seed(1)
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)
    set_seed(1, reproducible=True)
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (True, False)


def test_random_states_round_trip() -> None:
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    states = get_random_states()
    assert list(states) == [
        "random_state", "numpy_state", "torch_state", "torch_cuda_state", "torch_deterministic", "torch_benchmark",
    ]
    assert (states["torch_deterministic"], states["torch_benchmark"]) == (False, True)
    first = draws()
    set_seed(3, reproducible=True)
    set_random_states(**states)
    assert draws() == first
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)


def test_no_random_seeds_the_block_and_restores_what_follows() -> None:
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    set_seed(5)
    expected_after = draws()
    set_seed(5)
    with no_random():
        assert draws() == seeded_draws(42)
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (True, False)
    assert draws() == expected_after
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)
    with no_random(3, reproducible=False):
        assert draws() == seeded_draws(3)
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)


def test_no_random_restores_after_an_error() -> None:
    set_seed(5)
    expected_after = draws()
    set_seed(5)
    with pytest.raises(KeyError), no_random(seed=1):
        raise KeyError("inside")
    assert draws() == expected_after


# ------------------------------------------------------------------ tensor
@pytest.mark.parametrize(
    ("args", "kwargs", "dtype", "values"),
    [
        (([1, 2, 3],), {}, torch.int64, [1, 2, 3]),
        ((1, 2, 3), {}, torch.int64, [1, 2, 3]),
        ((1, 2.5), {}, torch.float32, [1.0, 2.5]),  # python floats are float64: made float32
        (([[1.0], [2.0]],), {"dtype": torch.float64}, torch.float32, [[1.0], [2.0]]),  # even when asked (fastai's)
        ((2.5,), {}, torch.float32, 2.5),
        ((True,), {}, torch.bool, True),
        ((np.float64(1.5),), {}, torch.float32, 1.5),
        ((np.int32(3),), {}, torch.int32, 3),
        ((np.arange(3.0),), {}, torch.float32, [0.0, 1.0, 2.0]),
        ((np.arange(3),), {"dtype": torch.float16}, torch.float16, [0.0, 1.0, 2.0]),
        ((np.arange(3, dtype=np.uint16),), {}, torch.float32, [0.0, 1.0, 2.0]),
        ((range(3),), {}, torch.int64, [0, 1, 2]),
        (([],), {}, torch.float32, []),
        ((torch.ones(2, dtype=torch.float64),), {"dtype": torch.int64}, torch.float32, [1.0, 1.0]),
    ],
)
def test_tensor_values_and_dtypes(
    args: tuple[Any, ...], kwargs: dict[str, Any], dtype: torch.dtype, values: Any
) -> None:
    assert same(tensor(*args, **kwargs), dtype, values)


def test_tensor_keeps_tensors_and_shares_numpy_memory() -> None:
    t = torch.arange(3)
    assert tensor(t, dtype=torch.float16) is t
    a = np.zeros(3, dtype=np.float32)
    res = tensor(a)
    a[0] = 9
    assert res[0].item() == 9

    class ArrayLike:
        def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
            return np.array([[1, 2]], dtype=np.uint8)

    assert same(tensor(ArrayLike()), torch.uint8, [[1, 2]])


@pytest.mark.parametrize("x", [[1.0, 2.0], np.arange(2.0), np.arange(2, dtype=np.float32)])
def test_tensor_requires_grad_gives_a_float32_leaf(x: Any) -> None:
    res = tensor(x, requires_grad=True)
    assert res.dtype == torch.float32 and res.requires_grad and res.is_leaf
    (res * 3).sum().backward()
    assert res.grad is not None and res.grad.tolist() == [3.0, 3.0]


@pytest.mark.parametrize("x", ["abc", None, {"a": 1}, np.array(["a"])])
def test_tensor_refuses_non_numbers(x: Any) -> None:
    with pytest.raises(ArgumentError, match=r"tensor\(\) cannot make a tensor of a .*give numbers"):
        tensor(x)


# ------------------------------------------------------------------ small tensor helpers
def test_unsqueeze() -> None:
    x = torch.zeros(2, 3)
    assert unsqueeze(x).shape == (2, 3, 1) and x.shape == (2, 3)
    assert unsqueeze(x, dim=0, n=3).shape == (1, 1, 1, 2, 3)
    assert unsqueeze(x, 1, 2).shape == (2, 1, 1, 3)
    assert unsqueeze_(x, dim=0, n=2) is x and x.shape == (1, 1, 2, 3)


def test_logit_is_the_clamped_inverse_sigmoid() -> None:
    p = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    clamped = np.array([1e-7, 0.2, 0.5, 0.9, 1 - 1e-7], dtype=np.float32).astype(np.float64)  # float32's bounds
    assert np.allclose(logit(p).tolist(), np.log(clamped / (1 - clamped)), rtol=1e-5)
    assert torch.allclose(torch.sigmoid(logit(p[1:4])), p[1:4])


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (2, [0, 0, 1, 0]),
        ([1, 3], [0, 1, 0, 1]),
        ((1, 3), [0, 1, 0, 1]),
        (torch.tensor([1, 3]), [0, 1, 0, 1]),
        (torch.tensor(2), [0, 0, 1, 0]),
        (torch.tensor([], dtype=torch.long), [0, 0, 0, 0]),
        ([], [0, 0, 0, 0]),
        (None, [0, 0, 0, 0]),  # as fastai's
        (np.array([0, 3]), [1, 0, 0, 1]),
        (range(2), [1, 1, 0, 0]),
        ([1, 1], [0, 1, 0, 0]),
        ((i for i in (0, 2)), [1, 0, 1, 0]),  # any iterable, as fastai's (was a RuntimeError)
        ({1: "a", 3: "b"}.keys(), [0, 1, 0, 1]),
        (np.array(2), [0, 0, 1, 0]),
    ],
)
def test_one_hot(x: Any, expected: list[int]) -> None:
    assert same(one_hot(x, 4), torch.uint8, expected)


def test_one_hot_decode() -> None:
    assert one_hot_decode(torch.tensor([0, 1, 1, 0])) == [1, 2]
    assert one_hot_decode([0.0, 1.0, 0.0, 1.0], ["a", "b", "c", "d"]) == ["b", "d"]
    assert one_hot_decode([0, 1, 1], []) == [1, 2]  # an empty vocab gives positions, as fastai's
    assert one_hot_decode(np.array([1, 0]), np.array(["x", "y"])) == ["x"]


def test_np_func_converts_tensor_arguments_and_the_result() -> None:
    seen: list[Any] = []

    def cumulative(a: np.ndarray, scale: Any = 1) -> np.ndarray:
        """Running sum."""
        seen.append((type(a), type(scale)))
        return np.cumsum(a) * scale

    f = np_func(cumulative)
    assert f.__name__ == "cumulative" and f.__doc__ == "Running sum."
    assert same(f(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), scale=2), torch.float32, [2.0, 6.0, 12.0])
    assert seen[-1] == (np.ndarray, int)
    assert same(np_func(np.sum)(torch.tensor([1, 2])), torch.int64, 3)


# ------------------------------------------------------------------ nested batches
def test_apply_walks_lists_tuples_sets_and_dicts() -> None:
    b = [1, (2, {"k": 3, "l": [4]}), {5}, Pair(6, 7), OrderedDict(a=8)]
    res = apply(lambda x, k, add=0: x * k + add, b, 10, add=1)
    assert res == [11, (21, {"k": 31, "l": [41]}), {51}, Pair(61, 71), {"a": 81}]
    assert isinstance(res[1], tuple) and isinstance(res[3], Pair) and type(res[4]) is dict
    assert apply(lambda x: "none" if x is None else x, [None, 2]) == ["none", 2]  # None is a leaf
    assert apply(lambda x: x + 1, True) == 2  # fastai's gives True: it casts the result back to bool


def test_map_tensors_maps_tensors_through_tuples_lists_and_dicts() -> None:
    class Items(list[Any]):
        pass

    t = torch.ones(2)
    b = [t, (Pair(t, "y"), {"k": Items([t, 3])}), {4}, None, "s"]
    res = map_tensors(lambda x: x * 2, b)
    assert res[0].tolist() == [2.0, 2.0] and type(res[1]) is tuple and type(res[1][0]) is Pair
    assert res[1][0].x.tolist() == [2.0, 2.0] and res[1][0].y == "y"
    assert type(res[1][1]["k"]) is Items and res[1][1]["k"][0].tolist() == [2.0, 2.0] and res[1][1]["k"][1] == 3
    assert res[2:] == [{4}, None, "s"]  # not tensors (sets are not walked): kept as they are
    assert t.tolist() == [1.0, 1.0]  # a new structure: the input is unchanged


def test_a_mapping_that_is_not_a_dict_is_walked_as_a_dict() -> None:
    # HuggingFace's BatchEncoding is a UserDict: moved and detached as fastai's walks do, coming back a dict
    w = torch.ones(2, requires_grad=True)
    batch = UserDict(input_ids=torch.arange(3), mask=w * 2)
    moved = data.to_device(batch, torch.device("meta"))
    assert type(moved) is dict and moved["input_ids"].device.type == "meta" and moved["mask"].device.type == "meta"
    detached = tc.to_detach(UserDict(out=w * 2))
    assert type(detached) is dict and not detached["out"].requires_grad


def test_to_half_and_to_float_change_only_floating_tensors() -> None:
    f32, i64, f64 = torch.ones(2), torch.arange(2), torch.ones(1, dtype=torch.float64)
    res = to_half([f32, (i64, {"k": f64}), 3, "x", None])
    assert [res[0].dtype, res[1][0].dtype, res[1][1]["k"].dtype] == [torch.float16, torch.int64, torch.float16]
    assert res[2:] == [3, "x", None]
    back = to_float(res)
    assert [back[0].dtype, back[1][0].dtype, back[1][1]["k"].dtype] == [torch.float32, torch.int64, torch.float32]
    assert to_float(None) is None


def test_to_np() -> None:
    w = torch.tensor([1.5, 2.0], requires_grad=True)
    res = to_np({"w": w, "i": [torch.arange(3)], "n": 4, "a": np.ones(1)})
    assert isinstance(res["w"], np.ndarray) and res["w"].dtype == np.float32 and res["w"].tolist() == [1.5, 2.0]
    assert res["i"][0].dtype == np.int64 and res["i"][0].tolist() == [0, 1, 2]
    assert res["n"] == 4 and res["a"].tolist() == [1.0]


def test_to_device_and_to_cpu() -> None:
    b = (torch.ones(2), {"k": [torch.arange(3), "label"]})
    moved = to_device(b, "meta")
    assert moved[0].device.type == "meta" and moved[1]["k"][0].device.type == "meta" and moved[1]["k"][1] == "label"
    assert to_device(torch.ones(1)).device == data.default_device()
    on_cpu = to_cpu(b)
    assert on_cpu[0].device.type == "cpu" and on_cpu[1]["k"][0].tolist() == [0, 1, 2]


def test_to_concat_joins_leaf_by_leaf() -> None:
    a, b = torch.arange(6.0).view(2, 3), torch.arange(6.0, 9.0).view(1, 3)
    res = to_concat([(a, {"k": [a]}), (b, {"k": [b]})])
    expected = np.concatenate([a.numpy(), b.numpy()]).tolist()
    assert isinstance(res, tuple) and res[0].tolist() == expected and res[1]["k"][0].tolist() == expected
    assert to_concat([a, a], dim=1).tolist() == np.concatenate([a.numpy(), a.numpy()], axis=1).tolist()
    pairs = to_concat([Pair(a, b), Pair(b, a)])
    assert isinstance(pairs, Pair) and pairs.x.shape == (3, 3) and pairs.y.shape == (3, 3)
    assert to_concat([]) == []


def test_to_concat_of_unequal_sizes_lists_the_slices() -> None:
    a, b = torch.arange(6).view(2, 3), torch.arange(6).view(3, 2)
    res = to_concat([a, b])
    assert isinstance(res, list) and [r.tolist() for r in res] == [[0, 1, 2], [3, 4, 5], [0, 1], [2, 3], [4, 5]]
    cols = to_concat([a, b], dim=1)  # fastai's takes rows by the size of dim 0 here, and fails
    assert [c.tolist() for c in cols] == [[0, 3], [1, 4], [2, 5], [0, 2, 4], [1, 3, 5]]


@pytest.mark.parametrize(
    ("xs", "kind"),
    [
        ([torch.tensor(1.0), torch.tensor(2.0)], "0-dim tensor"),
        ([np.ones(2), np.ones(2)], "ndarray"),
        ([["a"], ["b"]], "str"),
        ([torch.ones(1), 3], "int"),
    ],
)
def test_to_concat_refuses_what_is_not_a_tensor(xs: list[Any], kind: str) -> None:
    with pytest.raises(ArgumentError, match=f"to_concat joins tensors .*got .*{kind}.*torch.stack"):
        to_concat(xs)


@pytest.mark.parametrize(
    ("ls", "expected"),
    [
        (([1, 2], (3,), range(2), "ab", 5, None, {"a": 1}), [1, 2, 3, 0, 1, "ab", 5, {"a": 1}]),
        (((1,), [2]), (1, 2)),
        ((range(2), [2]), [0, 1, 2]),
        ((1, [2]), [1, 2]),
        (("ab", "cd"), ["ab", "cd"]),
        ((), []),
    ],
)
def test_concat_lists(ls: tuple[Any, ...], expected: Any) -> None:
    res = concat(*ls)
    assert res == expected and type(res) is type(expected)


def test_concat_tensors_and_arrays() -> None:
    assert concat(torch.ones(2), torch.zeros(1)).tolist() == [1.0, 1.0, 0.0]
    res = concat(np.ones(2), np.zeros(1))
    assert isinstance(res, np.ndarray) and res.tolist() == [1.0, 1.0, 0.0]
    mixed = concat([1], torch.ones(2))  # after the first position a tensor is one item
    assert len(mixed) == 2 and mixed[0] == 1 and mixed[1].tolist() == [1.0, 1.0]


def test_get_first_item_find_find_device() -> None:
    class Frame:  # pandas-like: [0] is a label, .iloc[0] the first row
        iloc = ["first row"]

        def __getitem__(self, key: Any) -> str:
            return "by label"

    assert get_first([3, 4]) == 3 and get_first(torch.tensor([7, 8])).item() == 7 and get_first(Frame()) == "first row"
    assert item_find([[1, 2], [3]], 1) == 3  # idx at the top level only, then first elements
    assert item_find({"a": [5, 6], "b": 7}, "b") == 7 and item_find({"a": [5, 6], "b": 7}, 1) == 7
    assert item_find(({"a": [5]},)) == 5 and item_find(8) == 8
    with pytest.raises(IndexError):
        item_find([])
    assert find_device(([torch.ones(1, device="meta")], torch.ones(1))) == torch.device("meta")


def test_find_bs_is_learnloops() -> None:
    assert tc.find_bs is metrics.find_bs
    assert tc.find_bs(([None, torch.ones(4, 2)],)) == 4


def test_batch_to_samples() -> None:
    x, y = torch.arange(4), torch.arange(4) * 10
    assert batch_to_samples((x, y), max_n=3) == [(0, 0), (1, 10), (2, 20)]
    nested = batch_to_samples([(x, x * 2), y], max_n=2)
    assert nested == [((0, 0), 0), ((1, 2), 10)] and isinstance(nested[0], tuple)
    rows = batch_to_samples(torch.arange(12).view(4, 3), max_n=2)
    assert [r.tolist() for r in rows] == [[0, 1, 2], [3, 4, 5]]
    assert batch_to_samples((np.arange(3), x))[2] == (2, 2)
    assert len(batch_to_samples(torch.arange(30))) == 10
    with pytest.raises(ArgumentError, match="batch_to_samples takes a tensor.*got a str"):
        batch_to_samples((x, ["a", "b", "c", "d"]))


# ------------------------------------------------------------------ models
class Head(Module):
    def __init__(self, n: int) -> None:
        self.lin = nn.Linear(n, 1)


class LateSuper(Module):
    def __init__(self) -> None:
        self.a = nn.Linear(1, 1)
        super().__init__()


class Child(Head):
    def __init__(self) -> None:
        super().__init__(2)
        self.b = nn.Linear(2, 3)


def test_module_subclasses_need_no_super_init(tmp_path: Path) -> None:
    head = Head(3)
    assert isinstance(head, nn.Module) and list(head.state_dict()) == ["lin.weight", "lin.bias"]
    assert head.lin.in_features == 3 and len(list(head.parameters())) == 2
    assert list(LateSuper().state_dict()) == ["a.weight", "a.bias"]  # a late super().__init__() wipes nothing
    assert list(Child().state_dict()) == ["lin.weight", "lin.bias", "b.weight", "b.bias"]
    twin = copy.deepcopy(head)
    assert torch.equal(twin.lin.weight, head.lin.weight) and twin.lin is not head.lin
    buffer = io.BytesIO()
    torch.save(head, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded.lin.weight, head.lin.weight)


def test_model_helpers() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    assert get_model(nn.DataParallel(model)) is model and get_model(model) is model
    assert one_param(model) is model[0].weight and one_param(nn.ReLU()) is None
    assert tc.params(model) == [model[0].weight, model[0].bias, model[1].weight, model[1].bias, model[2].weight,
                                model[2].bias]
    assert norm_types is params.NORM_TYPES and nn.BatchNorm2d in norm_types and nn.LayerNorm in norm_types
    assert tc.trainable_params is params.trainable_params and tc.norm_bias_params is params.norm_bias_params


# ------------------------------------------------------------------ distributed
def test_num_and_rank_distrib_read_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert (num_distrib(), rank_distrib()) == (0, 0)  # fastai's: 0 processes outside a launch
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert (num_distrib(), rank_distrib()) == (4, 3)
    distrib_barrier()  # no process group: returns at once
    x = torch.ones(2)
    assert maybe_gather(x) is x


def test_num_distrib_reads_a_process_group_started_without_a_launcher(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert (num_distrib(), rank_distrib()) == (1, 0)  # fastai's reads only the environment: 0
    finally:
        dist.destroy_process_group()


@pytest.fixture
def three_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A distributed job of three processes as learnloop.data sees it, process r holding `x + 10 * r`."""

    def fake_all_gather(parts: list[torch.Tensor], part: torch.Tensor) -> None:
        for r, p in enumerate(parts):
            p.copy_(part + 10 * r)

    monkeypatch.setattr(data, "is_distributed", lambda: True)
    monkeypatch.setattr(data, "world_size", lambda: 3)
    monkeypatch.setattr(dist, "all_gather", fake_all_gather)


@pytest.mark.parametrize(
    ("x", "axis", "expected"),
    [
        (torch.tensor([1.0, 2.0]), 0, [1.0, 2.0, 11.0, 12.0, 21.0, 22.0]),
        (torch.tensor([[1.0], [2.0]]), 1, [[1.0, 11.0, 21.0], [2.0, 12.0, 22.0]]),
        (torch.tensor(1.0), 0, 11.0),  # a number: the mean over the processes
    ],
)
@pytest.mark.usefixtures("three_processes")
def test_maybe_gather_joins_every_process_copy(x: torch.Tensor, axis: int, expected: Any) -> None:
    assert maybe_gather(x, axis=axis).tolist() == expected


@pytest.mark.usefixtures("three_processes")
def test_to_detach_gathers_every_process_copy_a_number_as_their_mean() -> None:
    vector, number = data.to_detach((torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor(1.0)))
    assert vector.tolist() == [1.0, 2.0, 11.0, 12.0, 21.0, 22.0] and not vector.requires_grad
    assert number.ndim == 0 and number.item() == 11.0  # as fastai's: the mean over the processes
    assert data.to_detach(torch.tensor(1.0), gather=False).item() == 1.0


def test_flatten_model_is_reexported_from_hooks_as_in_fastais_torch_core() -> None:
    from learnloop import hooks

    assert tc.flatten_model is hooks.flatten_model and "flatten_model" in tc.__all__
    model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 1)))
    assert tc.flatten_model(model) == [model[0], model[1][0], model[1][1]]
