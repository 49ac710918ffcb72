"""Speed helpers: channels_last memory format, torch.compile, and a torch.profiler trace of a few steps."""

from __future__ import annotations

from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..callback import Callback, is_side_run

__all__ = ["ChannelsLast", "CompileModel", "ProfilerCallback"]


class ChannelsLast(Callback):
    """Train in channels_last memory format: the model is converted at ``before_fit`` (fastai's).

    Convolutions in channels_last run faster on recent GPUs (and on CPU with oneDNN), most with mixed precision
    (``learn.to_channelslast()`` adds both). The batches are left as they are, so callbacks and ``get_preds``
    see the inputs the data gave: a convolution whose weights are channels_last computes in that format, and
    returns its output so, whatever the layout of its input. Its order is fastai's, -1: after the callbacks that
    set the model up (TrainEvalCallback moves it to the device) and before those that wrap it (DistributedTrainer).
    """

    order = -1

    def before_fit(self) -> None:
        self.learn.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub lacks it


class CompileModel(Callback):
    """Compile the model with ``torch.compile`` at the first ``before_fit`` (``nn.Module.compile``: in place).

    The model stays the same object, so ``learn.model``, its ``state_dict`` keys, the optimizer's
    parameters and checkpoints are unchanged; the compiled forward is kept for later fits and
    predictions. The keywords go to ``torch.compile`` (``mode``, ``backend``, ``fullgraph``, ``dynamic``, ...).

    >>> learn.fit(1, cbs=CompileModel(mode="max-autotune"))
    """

    order = -5  # after TrainEvalCallback has moved the model to its device

    def __init__(self, **compile_kwargs: Any) -> None:
        self.compile_kwargs = compile_kwargs

    @staticmethod
    def is_compiled(model: torch.nn.Module) -> bool:
        """Whether ``model.compile()`` has been applied."""
        return getattr(model, "_compiled_call_impl", None) is not None

    def before_fit(self) -> None:
        model = self.learn.model
        if not self.is_compiled(model):
            model.compile(**self.compile_kwargs)


class ProfilerCallback(Callback):
    """Profile training steps with ``torch.profiler`` and write a Chrome trace (chrome://tracing, Perfetto).

    The profiler skips ``skip_first`` steps, then for each of ``repeat`` cycles (0: until the fit ends)
    waits ``wait`` steps, warms up for ``warmup`` and records ``active``; each recorded cycle is written
    to ``path`` (default ``learn.path/'trace.json'``; later cycles get ``_1``, ``_2``... suffixes), and the
    files are listed in ``traces``. A step ends at each training ``after_batch``, so validation between
    epochs counts towards the step it interrupts. The profiler starts at the first training batch (not in an
    ``lr_find()`` sweep, which it sits out) and
    stops once its schedule is done, at ``after_fit``, or, after an exception left the previous fit,
    at the next ``before_fit`` (not at those of a ``validate()`` run inside the fit).
    ``prof`` is the last ``torch.profiler.profile`` (``prof.key_averages().table()``).

    >>> learn.fit(1, cbs=ProfilerCallback(wait=1, warmup=1, active=3, path="trace.json"))
    """

    order = 200  # a step ends after every other callback's after_batch
    run_valid = False

    def __init__(
        self,
        wait: int = 1,
        warmup: int = 1,
        active: int = 3,
        repeat: int = 1,
        skip_first: int = 0,
        path: str | Path | None = None,
        record_shapes: bool = False,
        profile_memory: bool = False,
        with_stack: bool = False,
    ) -> None:
        for name, value, low in (
            ("wait", wait, 0),
            ("warmup", warmup, 0),
            ("active", active, 1),
            ("repeat", repeat, 0),
            ("skip_first", skip_first, 0),
        ):
            # numpy integers too (np.int64(3) was refused as not "a whole number")
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral) or value < low:
                raise ValueError(
                    f"ProfilerCallback: {name} is a number of steps, a whole number >= {low}; got {value!r}."
                )
        self.wait, self.warmup, self.active = int(wait), int(warmup), int(active)
        self.repeat, self.skip_first = int(repeat), int(skip_first)
        self.trace_file = Path(path) if path is not None else None
        self.record_shapes, self.profile_memory, self.with_stack = record_shapes, profile_memory, with_stack
        self.prof: torch.profiler.profile | None = None
        self.traces: list[Path] = []
        self._running = False
        self._started = False
        self._n_steps = 0

    @property
    def n_profiled_steps(self) -> int | None:
        """Steps after which the schedule is done (None when ``repeat=0``: until the end of fit)."""
        if self.repeat == 0:
            return None
        return self.skip_first + (self.wait + self.warmup + self.active) * self.repeat

    def _trace_path(self) -> Path:
        base = self.trace_file if self.trace_file is not None else Path(self.learn.path) / "trace.json"
        if not self.traces:
            return base
        return base.with_name(f"{base.stem}_{len(self.traces)}{base.suffix}")

    def _write_trace(self, prof: torch.profiler.profile) -> None:
        path = self._trace_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(path))
        self.traces.append(path)

    def _activities(self) -> list[torch.profiler.ProfilerActivity]:
        activities = [torch.profiler.ProfilerActivity.CPU]
        param = next(self.learn.model.parameters(), None)
        if param is not None and param.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        return activities

    def before_fit(self) -> None:
        if self.learn._nested_run:  # a validate() inside the fit: the fit's profiler goes on
            return
        self._stop()
        self._started = False

    def before_batch(self) -> None:
        # Started by the first training batch, so validate() and get_preds() never start a profiler; nor does an
        # lr_find sweep (training batches, but no part of the fit to profile, as trackers and loggers sit it out).
        if self._started or is_side_run(self.learn):
            return
        self._started = True
        self.traces, self._n_steps = [], 0
        schedule = torch.profiler.schedule(
            wait=self.wait, warmup=self.warmup, active=self.active, repeat=self.repeat, skip_first=self.skip_first
        )
        self.prof = torch.profiler.profile(
            activities=self._activities(),
            schedule=schedule,
            on_trace_ready=self._write_trace,
            record_shapes=self.record_shapes,
            profile_memory=self.profile_memory,
            with_stack=self.with_stack,
        )
        self.prof.start()
        self._running = True

    def after_batch(self) -> None:
        if not self._running or self.prof is None:
            return
        self.prof.step()
        self._n_steps += 1
        done = self.n_profiled_steps
        if done is not None and self._n_steps >= done:
            self._stop()

    def _stop(self) -> None:
        if self._running and self.prof is not None:
            self._running = False
            self.prof.stop()

    def after_cancel_fit(self) -> None:
        self._stop()

    def __getstate__(self) -> dict[str, Any]:
        # torch's profiler (its results once stopped) cannot be pickled: a copy (pickle.dumps(learn), a learner
        # exported with this callback) keeps the settings and the trace paths, without a profiler.
        state = self.__dict__.copy()
        state.update(prof=None, _running=False)
        return state

    def after_fit(self) -> None:
        if not self.learn._nested_run:
            self._stop()
