"""The generic ``Optimizer``: a chain of steppers applied to every parameter with a gradient.

``step()`` means, for each group and each parameter ``p`` with a gradient (fastai's semantics)::

    for cb in cbs:
        state[p].update(cb(p, **{**state[p], **hypers}) or {})

When every stepper of the chain is a built-in one, the same update runs vectorised: each group's
parameters are bucketed by device, dtype, ``do_wd`` and step count, and each bucket goes through the
steppers' foreach forms, or through one fused torch kernel for the standard Adam and momentum-SGD
chains. A chain with any user stepper runs the per-parameter loop above.
"""

from __future__ import annotations

import difflib
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from ..errors import ArgumentError, InputError
from ..warn import warn_caller
from .base import BaseOptimizer, OptimizerState, ParamGroupView, as_param_list, is_param_group
from .chain import compile_chain, missing_message, stepper_name
from .foreach import RESERVED_NAMES, Bucket, cpu_chunks
from .steppers import stepper_defaults

__all__ = ["Optimizer", "Implementation"]

Implementation = Literal["auto", "fused", "foreach", "per_param"]
_PER_PARAM_STATE = ("grad_avg", "sqr_avg")  # state tensors shaped like their parameter
_GRAD = operator.attrgetter("grad")
_REQUIRES_GRAD = operator.attrgetter("requires_grad")

# Set while a state_dict known to come from the optimizer it is loaded into is loaded (`loading_own_state`).
_own_state: ContextVar[bool] = ContextVar("_own_state", default=False)


@contextmanager
def loading_own_state() -> Iterator[None]:
    """Load a state_dict that this optimizer (or its run) saved: hyper-parameters beyond its own are then those a fit
    or a schedule added (the wd a fit sets, ParamScheduler({'foo': ...})), and `Optimizer.load_state_dict` does not
    warn that the state may be another optimizer's."""
    token = _own_state.set(True)
    try:
        yield
    finally:
        _own_state.reset(token)


def _to_param_lists(params: Tensor | Iterable[Any]) -> tuple[list[list[Tensor]], list[dict[str, Any]]]:
    """Parameter lists from a tensor or tensors (one group), lists or generators of tensors, or torch-style group
    dicts."""
    # A module is refused below, but an nn.ParameterList is a list of parameters, as torch.optim and fastai read it.
    whole_module = isinstance(params, nn.Module) and not isinstance(params, nn.ParameterList)
    items: list[Any] = [params] if whole_module else as_param_list(params)
    if not items:
        raise ValueError("the optimizer got an empty parameter list")
    if isinstance(items[0], dict):
        groups = [as_param_list(g["params"]) for g in items]
        hypers = [{k: v for k, v in g.items() if k != "params"} for g in items]
    else:
        # Groups are lists (an nn.ParameterList, fastcore's L too) or generators (m.parameters()); else one group.
        groups = [as_param_list(g) for g in items] if is_param_group(items[0]) else [items]  # a bare tensor: one param
        hypers = [{} for _ in groups]
    _check_tensors(groups)
    return groups, hypers


def _check_tensors(groups: list[list[Any]]) -> None:
    """Refuse what is not a tensor where parameters belong, a module above all (a splitter returning `[m[0], m[1]]`
    for `[params(m[0]), params(m[1])]`): it has no gradient, so it would be left untrained without a word."""
    for group in groups:
        for p in group:
            if not isinstance(p, Tensor):
                what = f"the module {type(p).__name__}" if isinstance(p, nn.Module) else repr(p)[:80]
                raise ArgumentError(
                    f"The optimizer got {what} where it needs a parameter tensor: give it tensors, such as "
                    "list(model.parameters()) for one group or [params(m[0]), params(m[1])] for two "
                    "(learnloop.torch_core.params; a splitter returns these)."
                )


def _warn_repeated(param_lists: list[list[Tensor]]) -> None:
    """Warn of a parameter listed twice (overlapping groups from a splitter, say): it would be stepped twice."""
    seen: dict[int, int] = {}  # id of each parameter met so far: the group it was met in
    for i, group in enumerate(param_lists):
        for p in group:
            first = seen.get(id(p))
            if first is not None:
                where = f"in parameter groups {first} and {i}" if first != i else f"twice in parameter group {i}"
                warn_caller(
                    f"A parameter of shape {tuple(p.shape)} is {where}: each step updates it once per time it is "
                    "listed. List each parameter once (check the splitter's groups)."
                )
                return
            seen[id(p)] = i


def _split_repeats(plist: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """``plist``'s first occurrence of each parameter, and the occurrences after the first."""
    seen: set[int] = set()
    firsts: list[Tensor] = []
    repeats: list[Tensor] = []
    for p in plist:
        (repeats if id(p) in seen else firsts).append(p)
        seen.add(id(p))
    return firsts, repeats


class Optimizer(BaseOptimizer):
    """fastai's generic optimizer: ``Optimizer(params, cbs, train_bn=True, **defaults)``.

    ``params`` is a list of parameters (one group), a list of such lists (one group each) or torch-style group dicts;
    it may be a single tensor and ``cbs`` a single stepper, as in fastai. ``cbs`` are the steppers, called in order
    on each parameter with a gradient. ``defaults`` are the hyper-parameters (``lr=0.1``, ``wd=0.01``...), over the
    steppers' own ``defaults``; a slice or a list gives one value per group. ``train_bn`` is there for fastai's
    signature and does nothing (``Learner(train_bn=...)`` keeps normalisation layers trainable); False is warned of.
    ``implementation``: ``"auto"`` (or ``"fused"``, the same) runs a chain of built-in steppers on torch's fused
    kernels where they exist, else on its foreach forms; ``"foreach"`` never fuses (fastai's numbers bit for bit);
    ``"per_param"`` runs the steppers one parameter at a time, as fastai does. A chain with a stepper of your own
    always runs per parameter.

    >>> opt = Optimizer(model.parameters(), [weight_decay, sgd_step], lr=0.1, wd=0.01)  # doctest: +SKIP
    """

    keep_on_clear: ClassVar[tuple[str, ...]] = ("force_train", "do_wd")

    def __init__(
        self,
        params: Tensor | Iterable[Any],
        cbs: Callable[..., Any] | Sequence[Callable[..., Any]],
        train_bn: bool = True,
        *,
        implementation: Implementation = "auto",
        **defaults: Any,
    ) -> None:
        self.param_lists, group_hypers = _to_param_lists(params)
        _warn_repeated(self.param_lists)
        self.cbs: list[Callable[..., Any]] = [cbs] if callable(cbs) or not isinstance(cbs, Iterable) else list(cbs)
        for cb in self.cbs:  # fastai's fails at the first step: "'int' object is not callable"
            if not callable(cb):
                raise ArgumentError(
                    f"Optimizer: cbs are the stepper functions, each called as f(p, **hyper_parameters_and_state) "
                    f"(sgd_step, weight_decay, ...), one or a list of them; got {cb!r}."
                )
        self.state = OptimizerState()
        if not train_bn:  # fastai's Optimizer ignores it too, with a warning
            warn_caller(
                "Optimizer(train_bn=False) has no effect: which normalisation layers train in frozen groups is "
                "Learner(train_bn=...)'s setting (it marks their parameters force_train in opt.state), as in fastai."
            )
        self.train_bn = train_bn
        self.frozen_idx = 0
        self.implementation = implementation
        merged: dict[str, Any] = {}
        for cb in self.cbs:
            merged.update(stepper_defaults(cb))
        merged.update(defaults)
        self.defaults = merged
        self.hypers: list[dict[str, Any]] = [{} for _ in self.param_lists]
        for k, v in merged.items():
            self._set_hyper_values(k, self._spread_checked(k, v))
        # What a group added later gets: a default given per group (a slice, a list) gives it the last group's value.
        self._new_group_defaults = dict(self.hypers[-1])
        for h, extra in zip(self.hypers, group_hypers, strict=True):
            h.update(extra)
        self._compile()

    def _compile(self) -> None:
        self._compiled = compile_chain(self.cbs)
        # What the steppers need is checked at the next step, not now: as in fastai, a hyper-parameter may be set
        # after the optimizer is made (a callback's set_hyper in before_fit, a schedule's first batch).
        self._chain_checked = False

    def _check_chain(self) -> None:
        error = self._chain_error()
        if error is not None:
            raise error
        self._chain_checked = True

    def _chain_error(self) -> TypeError | None:
        """fastai's TypeError, naming the stepper and the name, when a stepper needs a name nothing provides."""
        names = set.intersection(*(set(h) for h in self.hypers)) | set(self.keep_on_clear)
        hit = self._compiled.missing(names)
        if hit is not None:
            # A stepper reads the state too ({**state, **hypers}): a name in the state of every parameter to step
            # (opt.state[p]['mask'] = ..., set before the step) is provided, as in fastai.
            held = [set(dict.get(self.state, p, ())) for plist in self.param_lists for p in plist if p.grad is not None]
            if held:
                hit = self._compiled.missing(names | set.intersection(*held))
        return None if hit is None else TypeError(missing_message(hit[0], hit[1], self.hypers[0]))

    def known_hypers(self) -> set[str]:
        """The names steppers read: current hypers, standard names, and every stepper argument."""
        return super().known_hypers() | self.stepper_arguments()

    def stepper_arguments(self) -> set[str]:
        """The names the steppers take as arguments (a stepper of your own may read others through **kwargs)."""
        return self._compiled.argument_names()

    def check_hyper_name(self, k: str) -> None:
        """Any name is accepted, as fastai's optimizer accepts it (a stepper may read it through ``**kwargs``);
        one close to a name the steppers read (``'lrr'`` for ``'lr'``, ``'sqr_mon'`` for ``'sqr_mom'``) is warned
        of as a likely typo."""
        known = self.known_hypers()
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1, cutoff=0.8)
            if close:
                warn_caller(
                    f"set_hyper({k!r}): no stepper of this optimizer takes {k!r} as an argument; did you mean "
                    f"{close[0]!r}? It is set anyway, as fastai sets any name (a stepper may read it from **kwargs)."
                )

    @property
    def implementation(self) -> Implementation:
        """Which path ``step`` takes for built-in chains: "auto" (fused where possible, else foreach),
        "fused", "foreach", or "per_param" (the reference loop)."""
        return self._implementation

    @implementation.setter
    def implementation(self, value: Implementation) -> None:
        if value not in get_args(Implementation):
            raise ValueError(f"implementation must be one of {get_args(Implementation)}, got {value!r}")
        self._implementation = value

    # -- stepping -----------------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter with a gradient; ``closure`` (torch-style) is called first if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if tuple(self.cbs) != self._compiled.cbs:  # someone edited opt.cbs
            self._compile()
        if not self._chain_checked:
            self._check_chain()
        fast = self._compiled.vectorised is not None and self._implementation != "per_param"
        try:
            for plist, hyper in zip(self.param_lists, self.hypers, strict=True):
                if fast and RESERVED_NAMES.isdisjoint(hyper):
                    self._step_vectorised(plist, hyper)
                else:
                    self._step_per_param(plist, hyper)
        except KeyError as e:
            # The vectorised forms read the hypers by name: one removed since the chain was checked (a hypers dict
            # replaced, say) is the TypeError naming the stepper that the per-parameter call (fastai's) raises.
            error = self._chain_error()
            if error is None:
                raise
            raise error from e
        return loss

    def _step_per_param(self, plist: list[Tensor], hyper: dict[str, Any]) -> None:
        state = self.state
        for p in plist:
            g = p.grad
            if g is None:
                continue
            if g.is_complex():
                self._reject_complex(p)
            s = state[p]
            for cb in self.cbs:
                try:
                    res = cb(p, **{**s, **hyper})
                except TypeError as e:
                    missing = self._compiled.missing_at_call(cb, {**s, **hyper})
                    if missing:
                        raise TypeError(missing_message(cb, missing, hyper)) from e
                    raise
                except RuntimeError as e:  # NotImplementedError too: torch's type, as fastai raises it
                    if g.layout != torch.strided:
                        e.add_note(
                            f"{self._where(p)} (shape {tuple(p.shape)}) has a sparse gradient ({g.layout}), which "
                            f"the stepper {stepper_name(cb)} cannot take (SGD with decoupled weight decay and Larc "
                            "step sparse gradients, as in fastai): use nn.Embedding(sparse=False), or "
                            "OptimWrapper(params, opt=torch.optim.SparseAdam) for sparse embeddings"
                        )
                    raise
                if isinstance(res, dict):
                    s.update(res)

    def _step_vectorised(self, plist: list[Tensor], hyper: dict[str, Any]) -> None:
        chain = self._compiled.vectorised
        assert chain is not None
        state = self.state
        # Without weight decay, do_wd changes nothing: one bucket instead of two halves the kernel launches.
        split_wd = hyper.get("wd", 0) != 0
        buckets: dict[tuple[Any, ...], Bucket] = {}
        sparse: list[Tensor] = []
        repeats: list[Tensor] = []
        if self._has_repeats(plist):
            # A parameter listed twice (warned of when the optimizer is made) is stepped once per time it is listed,
            # as fastai's loop does: a foreach op or fused kernel given the same tensor twice in one list would
            # update it once from a doubled update, and its state once.
            plist, repeats = _split_repeats(plist)
        for p in plist:
            g = p.grad
            if g is None:
                continue
            if g.layout != torch.strided:  # the per-parameter steppers take it as fastai's do (SGD's, Larc's)
                sparse.append(p)
                continue
            if g.is_complex():
                self._reject_complex(p)
            s = state[p]
            do_wd, step = bool(s.get("do_wd", True)) or not split_wd, s.get("step", 0)
            key = (p.device, p.dtype, do_wd, step)
            b = buckets.get(key)
            if b is None:
                buckets[key] = Bucket([p], [g], [s], do_wd, step)
            else:
                b.params.append(p)
                b.grads.append(g)
                b.states.append(s)
        fused = self._compiled.fused if self._implementation in ("auto", "fused") else None
        with torch.no_grad():
            for bucket in buckets.values():
                if fused is not None and fused(bucket, hyper):
                    continue
                for b in cpu_chunks(bucket) if bucket.params[0].device.type == "cpu" else (bucket,):
                    for spec, opts in chain:
                        spec.foreach(b, hyper, opts)
        if sparse:
            self._step_per_param(sparse, hyper)
        if repeats:
            self._step_per_param(repeats, hyper)

    def _has_repeats(self, plist: list[Tensor]) -> bool:
        """Whether a parameter is listed twice in `plist`. Looked for once per list and length, not at every step
        (a set of the ids of a group's parameters costs about 3% of a small model's step): a group replaced or
        appended to since is looked at again."""
        unique = self.__dict__.setdefault("_unique_lists", {})  # id -> (the list, its length) of lists without repeats
        seen = unique.get(id(plist))
        if seen is not None and seen[0] is plist and seen[1] == len(plist):
            return False
        if len(set(map(id, plist))) != len(plist):
            return True
        if len(unique) >= 4 * len(self.param_lists) + 4:  # lists replaced since: forget them
            unique.clear()
        unique[id(plist)] = (plist, len(plist))
        return False

    def _where(self, p: Tensor) -> str:
        """Where ``p`` is, for a message: ``parameter i of group j``."""
        return next(
            (
                f"parameter {i} of group {j}"
                for j, pl in enumerate(self.param_lists)
                for i, q in enumerate(pl)
                if q is p
            ),
            "a parameter",
        )

    def _reject_complex(self, p: Tensor) -> None:
        raise RuntimeError(
            f"{self._where(p)} (shape {tuple(p.shape)}, dtype {p.dtype}) is complex; learnloop's steppers work "
            "on real tensors: optimise torch.view_as_real(p) instead, or use OptimWrapper with a torch.optim "
            "optimizer"
        )

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero every gradient in place, as fastai does; ``set_to_none=True`` drops them instead (torch's way).

        Zeroed in place, a gradient stays a tensor: its parameter is still stepped, with a zero gradient, so
        weight decay and momentum keep moving it, even once it is frozen (fastai's behaviour).
        """
        params = itertools.chain.from_iterable(self.param_lists)
        if set_to_none:
            for p in params:
                p.grad = None
            return
        grads = [g for g in map(_GRAD, params) if g is not None]
        if not grads:
            return
        if any(map(_REQUIRES_GRAD, grads)):  # rare: gradients of backward(create_graph=True) hold a graph
            for g in grads:
                if g.grad_fn is not None:
                    g.detach_()
                else:
                    g.requires_grad_(False)
        torch._foreach_zero_(grads)

    # -- state ----------------------------------------------------------------------------------------
    def clear_state(self) -> None:
        """Forget all state but ``force_train`` and ``do_wd`` (the state dicts themselves are kept)."""
        for plist in self.param_lists:
            for p in plist:
                s = self.state[p]
                kept = {k: s[k] for k in self.keep_on_clear if k in s}
                s.clear()
                s.update(kept)

    def state_dict(self) -> dict[str, Any]:
        """``{'state': [one dict per parameter], 'hypers': [one dict per group], 'group_sizes': [...]}``.

        Like torch's, the state tensors are shared, not copied: ``torch.save`` or deep-copy to snapshot.
        """
        return {
            "state": [dict(self.state[p]) for plist in self.param_lists for p in plist],
            "hypers": [dict(h) for h in self.hypers],
            "group_sizes": [len(plist) for plist in self.param_lists],
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Load a ``state_dict``: copies its tensors onto each parameter's device (and dtype)."""
        if not isinstance(sd, Mapping) or "hypers" not in sd or "state" not in sd:
            found = f"keys {sorted(map(str, sd))}" if isinstance(sd, Mapping) else f"a {type(sd).__name__}"
            hint = (
                ": that is a torch.optim state_dict, which OptimWrapper(params, opt=torch.optim...) loads"
                if isinstance(sd, Mapping) and "param_groups" in sd else ""
            )
            raise InputError(f"An Optimizer's state_dict has the keys 'hypers' and 'state'; got {found}{hint}.")
        hypers, states = sd["hypers"], sd["state"]
        sizes = [len(plist) for plist in self.param_lists]
        # fastai asserts the first two; InputError is also an AssertionError, so code catching that still works.
        fix = "; load a state_dict saved from an optimizer over the same model and parameter groups"
        if len(hypers) != len(sizes):
            raise InputError(
                f"state_dict has {len(hypers)} parameter groups but this optimizer has {len(sizes)}{fix}"
            )
        if len(states) != sum(sizes):
            raise InputError(
                f"state_dict holds state for {len(states)} parameters but this optimizer has "
                f"{sum(sizes)} (in groups of {sizes}){fix}"
            )
        if "group_sizes" in sd and list(sd["group_sizes"]) != sizes:
            raise InputError(
                f"state_dict has groups of {list(sd['group_sizes'])} parameters, this optimizer {sizes}{fix}"
            )
        params = [p for plist in self.param_lists for p in plist]
        loaded = [
            self._load_param_state(i, p, s) for i, (p, s) in enumerate(zip(params, states, strict=True))
        ]
        if hypers and self.hypers and set(hypers[0]) != set(self.hypers[0]) and not _own_state.get():
            warn_caller(
                f"The state_dict's hyper-parameters ({', '.join(hypers[0])}) are not this optimizer's "
                f"({', '.join(self.hypers[0])}): was it saved from another optimizer? They replace these ones."
            )
        for h, new in zip(self.hypers, hypers, strict=True):
            h.clear()
            h.update(new)
        self._chain_checked = False  # the loaded hypers may lack a name the steppers need: checked at the next step
        for p, new in zip(params, loaded, strict=True):
            s = self.state[p]
            s.clear()
            s.update(new)

    @staticmethod
    def _load_param_state(i: int, p: Tensor, saved: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in saved.items():
            if isinstance(v, Tensor):
                like_p = k in _PER_PARAM_STATE
                if like_p and v.shape != p.shape:
                    raise InputError(
                        f"state {k!r} of parameter {i} has shape {tuple(v.shape)} but the parameter has "
                        f"shape {tuple(p.shape)}; was the state_dict saved from another model?"
                    )
                v = v.to(device=p.device, dtype=p.dtype if like_p else v.dtype, copy=True)
            out[k] = v
        return out

    # -- torch compatibility --------------------------------------------------------------------------
    @property
    def param_groups(self) -> list[ParamGroupView]:
        """torch-style live views ``{'params': [...], **hypers}``, one per group."""
        return [ParamGroupView(self, i) for i in range(len(self.param_lists))]

    @param_groups.setter
    def param_groups(self, groups: Sequence[Mapping[str, Any]]) -> None:
        if len(groups) != len(self.param_lists):
            raise ValueError(f"got {len(groups)} parameter groups, the optimizer has {len(self.param_lists)}")
        for i, g in enumerate(groups):
            self.param_lists[i] = as_param_list(g["params"])
            self.hypers[i].update({k: v for k, v in g.items() if k != "params"})

    def add_param_group(self, group: Mapping[str, Any]) -> None:
        """Append a torch-style group; hypers it does not give come from the construction defaults (a default given
        per group, such as ``lr=slice(1e-4, 1e-2)`` or a list, gives it the last group's value)."""
        new = as_param_list(group["params"])
        seen = {id(p) for plist in self.param_lists for p in plist}
        if any(id(p) in seen for p in new):
            raise ValueError("some parameters appear in more than one group")
        self.param_lists.append(new)
        defaults = getattr(self, "_new_group_defaults", self.defaults)  # an optimizer pickled before it had them
        self.hypers.append({**defaults, **{k: v for k, v in group.items() if k != "params"}})

    def __repr__(self) -> str:
        names = ", ".join(stepper_name(cb) for cb in self.cbs)
        return f"Optimizer([{names}], groups={[len(pl) for pl in self.param_lists]}, hypers={self.hypers})"
