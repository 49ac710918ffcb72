"""The Callback base class: a bag of event methods that sees the whole Learner."""

from __future__ import annotations

import functools
import inspect
import numbers
import re
import types
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from torch import nn

from .errors import ArgumentError
from .events import ALIASES, CANCEL_EXCEPTIONS, INNER_LOOP, Event, did_you_mean, resolve_event
from .warn import warn_caller

if TYPE_CHECKING:
    from .learner import Learner

__all__ = ["Callback", "before_batch_cb", "is_side_run", "noop", "snake_name"]


def noop(*args: Any, **kwargs: Any) -> None:
    """Do nothing (the logger of a learner that should print nothing)."""


def is_side_run(learn: Any) -> bool:
    """Whether `learn` is running lr_find's sweep or get_preds' gathering: runs that are no part of the training
    record, which fastai's trackers and loggers (and learnloop's checkpoints and NaN warning) sit out. A
    GatherPredsCallback you add to a fit is not get_preds' (its `side_run` is False): the fit is recorded."""
    if hasattr(learn, "lr_finder"):
        return True
    gather = getattr(learn, "gather_preds", None)
    return gather is not None and getattr(gather, "side_run", True)  # a ported fastai gatherer counts, as in fastai


def snake_name(cls_name: str, strip: str = "Callback") -> str:
    """`TrainEvalCallback` -> `train_eval`: drop a trailing `strip`, then camel case to snake case."""
    name = re.sub(f"{strip}$", "", cls_name) or strip
    name = re.sub(r"([A-Z])([A-Z][a-z]+)", r"\1_\2", name)  # fastai 2.8's: `My_Saver` -> `my_saver`
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


class Callback:
    """Base class of callbacks: define methods named like events (`before_batch`, ...).

    Attributes the callback does not have are read from the learner, so `self.model`
    is `self.learn.model`; assign through `self.learn` to change the learner's state.

    Class attributes: `order` (callbacks run sorted by it), `run_before` / `run_after` (callback classes this one
    must run before / after, whatever their `order`), `run` (False: skipped until the end of the fit),
    `run_train` / `run_valid` (False: its per-batch events skipped in training / validation). Event methods may
    also be given as keywords: `Callback(after_batch=f)`.

    >>> class CountBatches(Callback):
    ...     def before_fit(self): self.n = 0
    ...     def after_batch(self): self.n += 1
    """

    order: int = 0
    run_before: type | Iterable[type] | None = None
    run_after: type | Iterable[type] | None = None
    run: bool = True
    run_train: bool = True
    run_valid: bool = True
    # Set by the learner when the callback is added (None until then and after removal); typed as a
    # Learner because every event method runs with it set.
    learn: Learner = None  # type: ignore[assignment]

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        """Event methods may also be given as keywords: `Callback(after_batch=f)`. As in fastai, `f` becomes a
        method of the callback, called with it (`f(cb)`); a function without a required positional argument
        (`lambda: ...`, `lambda e=event: ...`) is called as it is."""
        for name, hook in hooks.items():
            if name in ALIASES:  # an old `begin_*` name, accepted as on a method, for its event
                warn_caller(f"Callback({name}=...) uses the old event name {name!r}; use {ALIASES[name].value!r}.",
                            DeprecationWarning)
                name = ALIASES[name].value
            elif name not in Event.__members__:
                raise ArgumentError(f"Callback() got {name!r}, which is not an event.{did_you_mean(name)}")
            if not callable(hook):  # fastai: a TypeError from MethodType, which does not say which event
                raise ArgumentError(
                    f"Callback({name}={hook!r}): the hook for event {name!r} must be a function, e.g. "
                    f"`Callback({name}=lambda: ...)` or `Callback({name}=lambda self: ...)`; got {type(hook).__name__} "
                    f"{hook!r}."
                )
            object.__setattr__(self, name, types.MethodType(hook, self) if _takes_an_argument(hook) else hook)

    @property
    def name(self) -> str:
        """The attribute under which the learner exposes this callback (`learn.<name>`)."""
        return getattr(self, "_name", None) or snake_name(type(self).__name__)

    def __getattr__(self, name: str) -> Any:
        learn = self.__dict__.get("learn")
        if name.startswith("_") or learn is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(learn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SORT_KEYS:
            check_run_order(self, name, value)
        learn = self.__dict__.get("learn")
        # What `learn.<name>` would find, as fastai's `hasattr(self.learn, name)`: the learner's attributes and the
        # model's it reads through. A private name shadows nothing: `self._x` is never read from the learner.
        if learn is not None and name != "learn" and not name.startswith("_") and (
            name in learn.__dict__ or _class_has(type(learn), name) or _model_has(learn.__dict__.get("model"), name)
        ):
            warn_caller(  # fastai's words first, which a ported test may match on
                f"You are shadowing an attribute ({name}) that exists in the learner. Use `self.learn.{name}` to "
                f"avoid this: {type(self).__name__} sets `self.{name}`, which shadows the learner's `{name}`; "
                f"`self.learn.{name} = ...` changes the learner's."
            )
        object.__setattr__(self, name, value)
        if learn is not None and name in _SORT_OR_HOOK:  # an event method or the order changed: new hook lists
            learn._build_hooks()

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        learn = self.__dict__.get("learn")
        if learn is not None and name in _SORT_OR_HOOK:  # an instance's hook or order gone: the class's, or none
            learn._build_hooks()

    def _idle_events(self) -> Collection[Event]:
        """Events whose method has nothing to do for now, which the loop may skip (none by default). A callback
        that overrides this calls `self.learn._build_hooks()` when its answer changes: it is asked only when the
        hook lists are built (ProgressCallback skips `after_batch` while it draws no bar)."""
        return ()

    def state_dict(self) -> dict[str, Any]:
        """State that travels in checkpoints (nothing by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def __call__(self, event_name: str) -> Any:
        """Run this callback's method called `event_name` and return what it returns (None when it has none),
        honouring `run`, and at the per-batch events `run_train` and `run_valid`. As in fastai, any method can be
        called so (`cb("reset")`), not only an event's; `after_fit` sets `run` back to True."""
        event = Event.__members__.get(event_name)
        if event is None and event_name in ALIASES:
            event = resolve_event(event_name)  # with its DeprecationWarning
        if event is not None:
            hook = _event_method(self, event)
        elif _own_attr(self, event_name):  # a name that is no event: the callback's method of that name
            hook = getattr(self, event_name)
        else:  # nothing to run, as in fastai; but a name close to an event's is most likely a typo
            hook = None
            if hint := did_you_mean(event_name):
                warn_caller(f"{type(self).__name__}({event_name!r}): no such event or method, nothing ran.{hint}")
        result = None
        if hook is not None and self.run and (event not in INNER_LOOP or _runs_now(self)):
            try:
                result = hook()
            except CANCEL_EXCEPTIONS:
                raise
            except Exception as e:
                blame(e, self, event_name)
                raise
        if event is Event.after_fit:
            self.run = True
        return result

    def __repr__(self) -> str:
        return type(self).__name__


def blame(e: BaseException, cb: Callback, event_name: str) -> None:
    """Add the callback and the event to the message of `e` (a PEP 678 note: `str(e)` stays the original message,
    tracebacks and `pytest.raises(match=...)` show both), which keeps its type and its arguments."""
    note = f"(raised in callback {type(cb).__name__} at event {event_name})"
    if note not in getattr(e, "__notes__", ()):  # once, when an event fired again by a callback raised it
        e.add_note(note)


_RUN_ORDER = ("run_before", "run_after")
_SORT_KEYS = frozenset((*_RUN_ORDER, "order"))


def check_run_order(cb: Callback, name: str | None = None, value: Any = None) -> None:
    """Refuse an `order` of `cb` that is not a number, and a `run_before` / `run_after` that is not a callback class
    or a list of them (or `value`, about to be set as `name`): a string order, a callback's name (`"Recorder"`) or
    instance would only fail when the callbacks are sorted, with a message about `<` or `isinstance`."""
    if name in (None, "order"):
        order = cb.order if name is None else value
        if not isinstance(order, numbers.Real) or order != order:  # fastai: a TypeError from sorting; NaN never sorts
            raise ArgumentError(
                f"{type(cb).__name__}.order is {order!r}, but order is the number callbacks run in order of "
                "(TrainEvalCallback's is -10, Recorder's 50): set a number, `order = 5` say."
            )
        if name == "order":
            return
    for attr in _RUN_ORDER if name is None else (name,):
        spec = getattr(cb, attr) if name is None else value
        if spec is None or isinstance(spec, type):
            continue
        items = [spec] if isinstance(spec, (str, Callback)) or not isinstance(spec, Iterable) else list(spec)
        for item in items:
            if isinstance(item, type):
                continue
            if isinstance(item, str):
                what, cls = f"a name ({item!r})", item if item.isidentifier() else "SomeCallback"
            elif isinstance(item, Callback):
                what, cls = f"an instance ({type(item).__name__}())", type(item).__name__
            else:
                what, cls = f"a {type(item).__name__}", "SomeCallback"
            raise ArgumentError(
                f"{type(cb).__name__}.{attr} is {spec!r}, but {attr} takes callback classes (one, or a list of "
                f"them), not {what}: pass the class, `{attr} = {cls}` (imported)."
            )


def _own_attr(cb: Callback, name: str) -> bool:
    """Whether `name` is the callback's own attribute (its class's or its instance's), not one read from the learner."""
    return name in vars(cb) or _class_has(type(cb), name)


def before_batch_cb(f: Callable[[Callback, tuple[Any, ...], tuple[Any, ...]], tuple[Any, Any]]) -> Callback:
    """A callback that, before each batch, sets the learner's `xb, yb` to `f(cb, xb, yb)` (fastai's shortcut).

    >>> learn.fit(1, cbs=before_batch_cb(lambda cb, xb, yb: ((xb[0] * 2,), yb)))
    """

    def before_batch(cb: Callback) -> None:
        cb.learn.xb, cb.learn.yb = f(cb, cb.learn.xb, cb.learn.yb)

    return Callback(before_batch=before_batch)


def _model_has(model: Any, name: str) -> bool:
    """Whether `model.<name>` exists (a Module's parameters, buffers and submodules included), without the
    formatted AttributeError a miss costs in `hasattr`."""
    if model is None or name.startswith("_"):
        return False
    if name in getattr(model, "__dict__", ()) or _class_has(type(model), name):
        return True
    if not isinstance(model, nn.Module):
        return False
    return name in model._parameters or name in model._buffers or name in model._modules


def _takes_an_argument(func: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it as it is
        return False
    # A required positional parameter takes the callback (`lambda self: ...`); `lambda e=event: ...`, the usual way
    # to bind a loop variable, is called as it is.
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in positional and p.default is p.empty or p.kind is p.VAR_POSITIONAL for p in params)


# Assigning one of these on a callback already added changes which hooks run, or in which order.
_SORT_OR_HOOK = frozenset({*Event.__members__, *ALIASES, "order", "run_before", "run_after"})


def _class_has(cls: type, name: str) -> bool:
    """`hasattr(cls, name)` without the AttributeError (and its formatted message) that a miss costs."""
    for c in cls.__mro__:
        if name in c.__dict__:
            return True
    return False


def _runs_now(cb: Callback) -> bool:
    """Whether `cb`'s per-batch methods run now: by `run_train` while training, `run_valid` while validating; either
    one lets them run without a learner (nothing says which phase it is), as in fastai."""
    if cb.learn is None:
        return cb.run_train or cb.run_valid
    return cb.run_train if getattr(cb, "training", True) else cb.run_valid


_BASE_ATTRS = frozenset(dir(Callback))


# Per class: the names of the attributes of each class of its MRO when its methods were listed, and those methods.
_CLASS_METHODS: dict[type, tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]] = {}


def _class_methods(cls: type) -> tuple[str, ...]:
    """Names of the callables a callback class defines beyond the base class. Cached, and listed again when an
    attribute was added to or removed from the class or a base since: a method patched in after the class was
    first used (fastcore's ``@patch``, a notebook cell run again) is an event method like the others."""
    layout = tuple(tuple(vars(k)) for k in cls.__mro__)
    cached = _CLASS_METHODS.get(cls)
    if cached is not None and cached[0] == layout:
        return cached[1]
    names = [a for a in dir(cls) if callable(getattr(cls, a, None)) and not isinstance(getattr(cls, a), type)]
    methods = tuple(a for a in names if not a.startswith("_") and a not in _BASE_ATTRS)
    _CLASS_METHODS[cls] = (layout, methods)
    return methods


def _methods(cb: Callback) -> list[str]:
    """Names of the callback's own callables: methods of its class and hooks set on the instance."""
    names = list(_class_methods(type(cb)))
    names += [a for a, v in vars(cb).items() if callable(v) and not a.startswith("_") and a not in names]
    return names


# Per event, the names its method may have: the event's own, then its old `begin_*` name.
_EVENT_NAMES: dict[Event, tuple[str, ...]] = {
    e: (e.value, *(name for name, event in ALIASES.items() if event is e)) for e in Event
}


def _event_method(cb: Callback, event: Event) -> Callable[[], Any] | None:
    """The callback's method for `event`, as `event_hooks` finds it, without listing all of them: `cb(event)` runs
    at every event, per batch too, for a callback that overrides `__call__`."""
    for name in _EVENT_NAMES[event]:
        if name not in _BASE_ATTRS and _own_attr(cb, name):
            method = getattr(cb, name)
            if callable(method) and not isinstance(method, type):
                return method  # type: ignore[no-any-return]
    return None


def event_hooks(cb: Callback) -> dict[Event, Callable[[], Any]]:
    """The callback's bound event methods, by event; `begin_*` names count as `before_*`."""
    hooks: dict[Event, Callable[[], Any]] = {}
    for attr in _methods(cb):
        if attr in Event.__members__:
            hooks[Event(attr)] = getattr(cb, attr)
        elif attr in ALIASES:
            hooks.setdefault(ALIASES[attr], getattr(cb, attr))
    return hooks


@functools.cache
def _name_problem(cls_name: str, attr: str) -> tuple[type[Warning], str] | None:
    """The warning a method called `attr` deserves (an old event name, a likely typo), if any."""
    if attr in Event.__members__:
        return None
    if attr in ALIASES:
        new = ALIASES[attr].value
        return DeprecationWarning, f"{cls_name}.{attr} uses the old event name {attr!r}; rename it {new!r}."
    if hint := did_you_mean(attr, cutoff=0.85):
        return UserWarning, f"{cls_name}.{attr} is not an event, so it will never be called by the loop.{hint}"
    return None


def check_hook_names(cb: Callback) -> None:
    """Warn about methods that look like misspelt events, and about deprecated `begin_*` names."""
    for attr in _methods(cb):
        problem = _name_problem(type(cb).__name__, attr)
        if problem is not None:
            warn_caller(problem[1], problem[0])
