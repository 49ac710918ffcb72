"""CallbackHost: the callbacks of a learner, their per-event hook lists, and firing events."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from .attrs import OwnAttrs
from .callback import Callback, blame, check_hook_names, check_run_order, event_hooks
from .errors import WrongKindError
from .events import CANCEL_EXCEPTIONS, INNER_LOOP, Event, resolve_event
from .sorting import sort_callbacks
from .warn import warn_caller

__all__ = ["CallbackHost", "NotACallbackError", "as_list"]

_AFTER_FIT, _BEFORE_FIT = Event.after_fit, Event.before_fit
# Indentation of each event in show_cbs, by the phase it belongs to.
_DEPTH = {"create": 0, "fit": 0, "epoch": 1, "train": 2, "validate": 2}
_DEPTH.update({e.value.split("_")[-1]: 3 for e in INNER_LOOP})
# What fastai 2.8's show_training_loop prints, in its order: its phases ("Start ..."/"End ...") and the events it
# lists (not after_create, after_backward, after_cancel_backward, after_cancel_step); validation batches are one line.
_FASTAI_LOOP = (
    "Start Fit", "before_fit", "Start Epoch Loop", "before_epoch", "Start Train", "before_train",
    "Start Batch Loop", "before_batch", "after_pred", "after_loss", "before_backward", "before_step", "after_step",
    "after_cancel_batch", "after_batch", "End Batch Loop", "End Train", "after_cancel_train", "after_train",
    "Start Valid", "before_validate", "Start Batch Loop", "**CBs same as train batch**", "End Batch Loop",
    "End Valid", "after_cancel_validate", "after_validate", "End Epoch Loop", "after_cancel_epoch", "after_epoch",
    "End Fit", "after_cancel_fit", "after_fit",
)


def instantiate(cls: type[Callback]) -> Callback:
    """`cls()`, a callback class given where an instance goes; one whose `__init__` needs arguments gets a note."""
    try:
        return cls()
    except TypeError as e:
        e.add_note(f"learnloop: the callback class {cls.__name__} was given in place of an instance, so it is made "
                   f"with no arguments, {cls.__name__}(); pass an instance to give it arguments: {cls.__name__}(...).")
        raise


def _class_layout(cbs: list[Callback]) -> tuple[Any, ...]:
    """The attributes of each callback's classes (below Callback), by name and object identity: what a method
    patched into a class after its callbacks were added changes."""
    return tuple(
        tuple((name, id(value)) for name, value in vars(k).items())
        for cb in cbs for k in type(cb).__mro__ if k is not Callback and k is not object
    )


def as_list(cbs: Any) -> list[Any]:
    """`cbs` (None, one callback or class, or an iterable of them) as a list."""
    if cbs is None:
        return []
    if isinstance(cbs, (Callback, type, str)) or not isinstance(cbs, Iterable):
        return [cbs]
    return list(cbs)


class NotACallbackError(WrongKindError):
    """`add_cb` or `remove_cb` given something other than a callback or a callback class: an AttributeError, as
    fastai's (``'str' object has no attribute 'learn'``), and a TypeError, what it is."""


class _EveryEvent(Callback):
    """Stands for a callback that overrides `__call__` in the hook lists. fastai calls such a callback at every
    event whatever its `run`, `run_train` and `run_valid` say (its override decides what runs; Callback.__call__,
    if it calls it, applies them to the methods), so the loop's checks of them always pass for it."""

    cb: Callback

    def __init__(self, cb: Callback) -> None:
        object.__setattr__(self, "cb", cb)

    def __repr__(self) -> str:
        return repr(self.cb)


class CallbackHost:
    """Holds callbacks and fires events on them.

    The per-event lists of bound hook methods are rebuilt when callbacks are added or removed, never
    when an event fires: an event costs nothing for a callback that does not define it.
    """

    training: bool
    _attrs: OwnAttrs  # the host's own attributes at a plain object's cost (the Learner sets it)

    def __init__(self) -> None:
        self._cbs: list[Callback] = []
        self._built_for: list[Callback] = []  # the callbacks the hook lists were last built from, in order
        self._built_classes: tuple[Any, ...] = ()  # their classes' attributes then (_class_layout)
        # What fires: per event, the hooks to call, in order. `_plan` lists every callback with a method for the event
        # (what `ordered_cbs` and `show_training_loop` show); `_hooks` leaves out the methods a callback marks as
        # having nothing to do for now (`Callback._idle_events`), so that the loop does not call them for nothing.
        self._hooks: dict[Event, list[tuple[Callback, Callable[[], Any]]]] = {e: [] for e in Event}
        self._plan: dict[Event, list[Callback]] = {e: [] for e in Event}
        # Every callback in order, as listed in `_hooks` and with its after_fit hook or None: each one's `run` is set
        # back to True right after its own turn at after_fit, as fastai calls every callback in turn (a later
        # callback's after_fit sees it).
        self._after_fit_turns: list[tuple[Callback, Callback, Callable[[], Any] | None]] = []

    @property
    def cbs(self) -> list[Callback]:
        """The callbacks, in the order they were added. As in fastai, the list may be replaced (`learn.cbs = ...`)
        or changed in place (`learn.cbs.pop()`): the loop runs what it holds from the next event on that is not a
        per-batch one. `add_cb`/`remove_cb` also keep `learn.<name>` up to date, and check what they are given."""
        return self._cbs

    @cbs.setter
    def cbs(self, value: Iterable[Callback]) -> None:
        self._cbs = list(value)
        self._sync_cbs()

    def _sync_cbs(self, classes: bool = False) -> None:
        """Rebuild the hook lists if `cbs` changed since they were built (the list replaced or edited in place):
        checked at every event that is not a per-batch one, an identity check per callback. With `classes` (at each
        before_fit, and for the listings), also if a callback's class gained, lost or replaced an attribute since (a
        method patched in, fastcore's ``@patch``, a notebook cell run again), as fastai finds each method per event."""
        cbs, built = self._cbs, self._built_for
        if len(cbs) != len(built) or any(a is not b for a, b in zip(cbs, built, strict=True)):
            for cb in cbs:
                if not isinstance(cb, Callback):
                    raise TypeError(
                        f"learn.cbs holds {cb!r}, which is not a Callback: put only instances of learnloop.Callback "
                        "in it (or use add_cb, which also takes a class)."
                    )
                check_run_order(cb)
                if cb.learn is None:  # put in the list directly: it needs its learner too
                    object.__setattr__(cb, "learn", self)
            self._build_hooks()
        elif classes and _class_layout(cbs) != getattr(self, "_built_classes", None):  # (a learner pickled before)
            self._build_hooks()

    def add_cb(self, cb: Callback | type[Callback]) -> Self:
        """Add a callback (a class is instantiated) and expose it as `learn.<cb.name>`."""
        if isinstance(cb, type) and issubclass(cb, Callback):
            cb = instantiate(cb)
        if not isinstance(cb, Callback):  # fastai: an AttributeError reading cb.learn (a TypeError making a class)
            raise NotACallbackError(
                f"{cb!r} is not a Callback: pass an instance or subclass of learnloop.Callback "
                "(its event methods are named before_fit, after_batch, ...)."
            )
        check_hook_names(cb)
        check_run_order(cb)  # a class attribute `run_after = "Recorder"` is seen here, before the callback is added
        own = self.__dict__
        # The class's attributes, those it declares (the loop's state, set only once the loop runs) and the instance's.
        declared = any(cb.name in vars(k).get("__annotations__", {}) for k in type(self).__mro__)
        if hasattr(type(self), cb.name) or declared or (cb.name in own and not isinstance(own[cb.name], Callback)):
            raise ValueError(
                f"{type(cb).__name__} would be exposed as learn.{cb.name}, which is already the learner's own "
                f"attribute; rename the class or give the callback another name (set `_name`)."
            )
        if any(c is cb for c in self.cbs):
            warn_caller(f"{cb!r} is already in learn.cbs: added again, it runs twice at each event (as in fastai).")
        other = cb.__dict__.get("learn")
        # One list of callbacks for learner after learner (k-fold, say) is fine; not while the other one trains.
        if other is not None and other is not self and other.__dict__.get("_in_fit"):
            warn_caller(
                f"{cb!r} belongs to a Learner that is fitting: it now reads this learner, in that one's fit too. "
                "Give each learner its own instance."
            )
        self.cbs.append(cb)
        try:
            self._build_hooks()
        except ValueError:
            self.cbs.remove(cb)
            raise
        object.__setattr__(cb, "learn", self)
        setattr(self, cb.name, cb)
        return self

    def add_cbs(self, cbs: Callback | type[Callback] | Iterable[Callback | type[Callback]] | None) -> Self:
        """Add each callback of `cbs`."""
        for cb in as_list(cbs):
            self.add_cb(cb)
        return self

    def remove_cb(self, cb: Callback | type[Callback]) -> Self:
        """Remove a callback, or every callback of a class."""
        if isinstance(cb, type):
            for found in [c for c in self.cbs if isinstance(c, cb)]:
                self.remove_cb(found)
            return self
        if not isinstance(cb, Callback):
            raise self._not_a_callback(cb)
        was_here = cb in self.cbs
        if was_here:
            self.cbs.remove(cb)
        name = cb.name
        if any(c is cb for c in self.cbs):  # it was in the list twice (added again): still on the learner once
            object.__setattr__(cb, "learn", self)
        elif was_here or cb.__dict__.get("learn") is self:  # not another learner's callback, which it keeps
            object.__setattr__(cb, "learn", None)
        if self.__dict__.get(name) is cb:
            # `learn.<name>` goes back to the callback of that name still on the learner (the last added), as when
            # a fit's or a block's callback shadowed the learner's own one (`fit(cbs=SaveModelCallback())`).
            same = [c for c in self.cbs if isinstance(c, Callback) and c.name == name]
            if same:
                setattr(self, name, same[-1])
            else:
                delattr(self, name)
        self._build_hooks()
        return self

    def remove_cbs(self, cbs: Callback | type[Callback] | Iterable[Callback | type[Callback]] | None) -> Self:
        """Remove each callback (or callback class) of `cbs`."""
        cbs = as_list(cbs)
        for cb in cbs:  # all checked before any is removed
            if not isinstance(cb, (Callback, type)):
                raise self._not_a_callback(cb)
        for cb in cbs:
            self.remove_cb(cb)
        return self

    def _not_a_callback(self, cb: Any) -> NotACallbackError:
        """The error of `remove_cb(cb)` given something that is neither a callback nor a class."""
        what = "remove_cb takes a Callback instance or class"
        if not isinstance(cb, str):
            return NotACallbackError(f"{what}, got {type(cb).__name__} {cb!r}.")
        found = self.__dict__.get(cb)
        if isinstance(found, Callback):
            return NotACallbackError(
                f"{what}, got the string {cb!r}: learn.remove_cb(learn.{cb}) or "
                f"learn.remove_cb({type(found).__name__})."
            )
        names = sorted(c.name for c in self.cbs)
        return NotACallbackError(
            f"{what}, got the string {cb!r} (and the learner has no callback of that name; it has {names}): "
            "pass the callback, learn.remove_cb(learn.<name>), or its class."
        )

    @contextmanager
    def added_cbs(self, cbs: Any) -> Iterator[Self]:
        """Add `cbs` for the duration of the block."""
        added: list[Callback] = []
        try:
            for cb in as_list(cbs):
                cb = instantiate(cb) if isinstance(cb, type) and issubclass(cb, Callback) else cb
                self.add_cb(cb)  # may refuse cb: the ones added before it are removed again below
                added.append(cb)
            yield self
        finally:
            self.remove_cbs(added)

    @contextmanager
    def removed_cbs(self, cbs: Any) -> Iterator[Self]:
        """Remove `cbs` for the duration of the block; they come back at the end of the list. Only the callbacks the
        learner has come back, each once (one given that it does not have is left alone)."""
        given = as_list(cbs)
        for cb in given:  # all checked before any is removed
            if not isinstance(cb, (Callback, type)):
                raise self._not_a_callback(cb)
        removed: list[Callback] = []
        for cb in given:
            for found in self._grab(cb) if isinstance(cb, type) else [cb]:
                if any(c is found for c in self.cbs) and not any(c is found for c in removed):
                    removed.append(found)
        self.remove_cbs(removed)
        try:
            yield self
        finally:
            self.add_cbs(removed)

    def _grab(self, cls: type) -> list[Callback]:
        return [cb for cb in self.cbs if isinstance(cb, cls)]

    def _build_hooks(self) -> None:
        """Rebuild the per-event lists of bound methods: done when callbacks change, never per event."""
        hooks: dict[Event, list[tuple[Callback, Callable[[], Any]]]] = {e: [] for e in Event}
        plan: dict[Event, list[Callback]] = {e: [] for e in Event}
        ordered = sort_callbacks(self._cbs)
        for cb in ordered:  # one put in `learn.cbs` directly since the last build (add_cb/remove_cb came first)
            if cb.learn is None:
                object.__setattr__(cb, "learn", self)
        for cb in ordered:
            if type(cb).__call__ is not Callback.__call__:
                # A callback that overrides `__call__` (to log every event, say) is called with every event's name,
                # as fastai calls every callback: its override decides what to run.
                has, every = event_hooks(cb), _EveryEvent(cb)
                for event in Event:
                    hooks[event].append((every, functools.partial(cb, event.value)))
                    if event in has:  # listed, as fastai lists a callback, only where it has a method
                        plan[event].append(cb)
                continue
            idle = cb._idle_events()
            for event, method in event_hooks(cb).items():
                plan[event].append(cb)
                if event not in idle:
                    hooks[event].append((cb, method))
        # In place: the batch loop holds this dict for a whole phase. The lists are new objects, so an event
        # whose hooks are running when a callback is added or removed finishes with the list it started.
        self._hooks.update(hooks)
        self._plan.update(plan)
        after_fit = {id(cb.cb if type(cb) is _EveryEvent else cb): (cb, hook) for cb, hook in hooks[_AFTER_FIT]}
        self._after_fit_turns = [(cb, *after_fit.get(id(cb), (cb, None))) for cb in ordered]
        self._built_for = list(self._cbs)
        self._built_classes = _class_layout(self._cbs)

    def sorted_cbs(self) -> list[Callback]:
        """The callbacks in the order they run (by `order`, then `run_before`/`run_after`, then insertion)."""
        return sort_callbacks(self.cbs)

    def ordered_cbs(self, event: str) -> list[Callback]:
        """The callbacks with a method for `event`, in the order they run (fastai's name)."""
        self._sync_cbs(classes=True)
        return list(self._plan[resolve_event(event)])

    def __call__(self, event_name: str | Iterable[str]) -> None:
        """Fire one event (or each of a list) on every callback."""
        one = isinstance(event_name, str) or not isinstance(event_name, Iterable)  # not a list: resolve_event says
        names = [event_name] if one else list(event_name)
        for name in names:
            self._fire(resolve_event(name))

    def _fire(self, event: Event) -> None:
        self._sync_cbs(classes=event is _BEFORE_FIT)
        if event is _AFTER_FIT:
            self._run_after_fit()
        elif hooks := self._hooks[event]:
            self._run_hooks(event, hooks)

    def _run_hooks(self, event: Event, hooks: list[tuple[Callback, Callable[[], Any]]]) -> None:
        inner = event in INNER_LOOP
        state = self._attrs  # `training` is read for each callback, as fastai's: a hook may change it (validate())
        for cb, hook in hooks:
            if cb.run and (not inner or (cb.run_train if state.training else cb.run_valid)):
                try:
                    hook()
                except CANCEL_EXCEPTIONS:
                    raise
                except Exception as e:
                    blame(e, cb.cb if type(cb) is _EveryEvent else cb, event.value)
                    raise

    def _run_after_fit(self) -> None:
        """Each callback in turn: its after_fit (when it has one and runs), then its `run` set back to True."""
        for cb, listed, hook in self._after_fit_turns:
            if hook is not None:
                self._run_hooks(_AFTER_FIT, [(listed, hook)])
            cb.run = True

    def _run_back_on(self) -> None:
        """Every callback's `run` set back to True, as after_fit does, for a side run that raised and so skipped it
        (get_preds' before_fit, an lr_find sweep): a callback sitting that run out (a tracker, a logger: `run` False
        at its before_fit) would otherwise sit out every later fit too, silently."""
        for cb in self.cbs:
            cb.run = True

    def show_training_loop(self) -> None:
        """Print the training loop as fastai 2.8 does, line for line: its phases, and at each of its events the
        callbacks that run there, in order (`show_cbs` lists every event, those fastai leaves out included)."""
        self._sync_cbs(classes=True)
        indent = 0
        for step in _FASTAI_LOOP:
            if step.startswith("Start"):
                print(f"{' ' * indent}{step}")
                indent += 2
            elif step.startswith("End"):
                indent -= 2
                print(f"{' ' * indent}{step}")
            else:
                cbs = [] if step.startswith("**") else self._plan[Event(step)]
                print(f"{' ' * indent} - {step:15}: [{', '.join(map(repr, cbs))}]")

    def show_cbs(self) -> None:
        """Print the execution plan: every event, in loop order, with the callbacks that run at it, in order
        (``-`` for none). Validation batches run the same callbacks as training ones, less those with
        ``run_valid=False``; training ones less those with ``run_train=False``."""
        self._sync_cbs(classes=True)
        for event in Event:
            names = ", ".join(type(cb).__name__ for cb in self._plan[event]) or "-"
            print(f"{'  ' * _DEPTH[event.value.split('_')[-1]]}{event.value:<22} {names}")
