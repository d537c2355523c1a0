"""What `facto train` and `facto sweep` show on stderr while they run, and what a Ctrl-C kept.

`RunProgress` draws a run's events: tqdm bars where stderr is a terminal, plain lines where it
is not (a file, a pipe, a CI log): one per test of a variant, and a step line at most
every EVERY_S seconds. `NotedStore` notes the runs a command stores, so `kept_message` says
exactly what is in the history after a Ctrl-C.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Any, Callable, Sequence

EVERY_S = 10.0  # plain lines: at most one step line per this many seconds
MB = 1e6


def is_terminal(stream: IO) -> bool:
    """Whether `stream` is a terminal (a closed or odd stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class RunProgress:
    """A run's events on `stream` (stderr by default): bars on a terminal, plain lines elsewhere.

    `prefix` starts every line (a sweep's "[2/5] "); `phases`: a line as a dense warm-up starts (its
    steps are lines, also on a terminal); `leave`: bars stay on the screen once their run ends;
    `bars`: force bars on or off (None: a terminal gets them); `clock`: seconds, for the step lines."""

    def __init__(self, quiet: bool = False, stream: IO | None = None, prefix: str = "", phases: bool = True,
                 leave: bool = True, bars: bool | None = None, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet, self.prefix, self.phases, self.leave = quiet, prefix, phases, leave
        self.every_s, self.clock = every_s, clock
        self.use_bars = is_terminal(self.stream) if bars is None else bars
        self.bars: dict[str, Any] = {}
        self.total = 0
        self.epochs = 1
        self.warmup_steps = 0
        self.latest: dict[str, Any] = {}  # variant -> its last StepEvent
        self.order: list[str] = []  # the variants still training, in the order each step trains them
        self.said = clock()  # when the last plain line was written

    def line(self, text: str) -> None:
        """`text` on a line of its own (above the bars while they are drawn)."""
        if self.bars:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
        self.said = self.clock()

    def say(self, text: str) -> None:
        """A progress line, unless quiet."""
        if not self.quiet:
            self.line(self.prefix + text)

    def add(self, event: Any) -> None:
        """Draw one event of `facto.engine.train.compare` (others are ignored)."""
        from ..engine.events import EvalEvent, FailureEvent, PhaseEvent, StartEvent, StepEvent, SummaryEvent

        if isinstance(event, PhaseEvent):
            self.warmup_steps = int(event.config.get("warm_start_steps") or 0)
            if self.phases and event.phase == "warm-up":  # the data loaded, the models built: no error to come
                self.say(f"warm-up: {self.warmup_steps} dense steps before factorizing ...")
        elif isinstance(event, StartEvent):
            self.total = event.total_steps
            self.epochs = max(1, -(-event.total_steps // max(1, event.steps_per_epoch)))
            self.order, self.latest = list(event.params), {}
            self._open_bars(event.params)
        elif isinstance(event, StepEvent):
            self._step(event)
        elif isinstance(event, EvalEvent):
            self.say(f"{event.variant} tested at step {event.step}/{self.total} (epoch {event.epoch}/{self.epochs}): "
                     f"{event.test_accuracy:.2f} % test accuracy, test loss {event.test_loss:.3f}")
        elif isinstance(event, FailureEvent):
            self.order = [v for v in self.order if v != event.variant]
            self.line(f"{self.prefix}{event.variant} stopped: {event.reason}")
        elif isinstance(event, SummaryEvent):
            self.close()

    def _open_bars(self, variants: Sequence[str]) -> None:
        if self.quiet or not self.use_bars:
            return
        from tqdm import tqdm

        for i, name in enumerate(variants):
            self.bars[name] = tqdm(total=self.total, desc=f"{self.prefix}{name:>8}", position=i,
                                   leave=self.leave, file=self.stream)

    def _step(self, event: Any) -> None:
        if event.variant in self.bars:
            bar = self.bars[event.variant]
            bar.update(1)
            bar.set_postfix(loss=f"{event.loss:.3f}", mem=f"{event.act_bytes / MB:.1f}MB")
            return
        self.latest[event.variant] = event
        if self.quiet or (self.use_bars and event.variant != "warmup") or self.clock() - self.said < self.every_s:
            return
        if event.variant == "warmup":  # steps -N..-1 before training; said as 1..N
            self.say(f"warm-up step {self.warmup_steps + event.step}/{self.warmup_steps}: loss {event.loss:.3f}")
            return
        if self.order and event.variant != self.order[-1]:  # once every variant took this step
            return
        losses = ", ".join(f"{v} loss {self.latest[v].loss:.3f}" for v in self.order if v in self.latest)
        self.say(f"step {event.step}/{self.total} (epoch {event.epoch}/{self.epochs}): {losses}")

    def close(self) -> None:
        """Close the bars (safe to call twice)."""
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


class NotedStore:
    """A RunStore that notes the id of every run started through it (`run_ids`); the rest passes through."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.run_ids: list[int] = []

    def start_run(self, *args: Any, **kwargs: Any) -> int:
        run_id = self.store.start_run(*args, **kwargs)
        self.run_ids.append(run_id)
        return run_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["store"], name)


def _ids(ids: Sequence[int]) -> str:
    """'run 3', 'runs 3 and 4', 'runs 3, 4 and 5'."""
    words = [str(i) for i in ids]
    listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"run{'s' if len(ids) > 1 else ''} {listed}"


def kept_message(store: NotedStore | None, no_store: bool = False, head: str = "interrupted") -> str:
    """The line a Ctrl-C ends with: `head`, then what the history holds of the command's runs,
    read back from the store (`store` None: nothing was stored; `no_store`: because of --no-store)."""
    if store is None or not store.run_ids:
        return f"{head}: nothing was stored" + (" (--no-store)" if no_store else "")
    statuses: dict[str, list[int]] = {}
    for run_id in store.run_ids:
        try:
            status = store.get_run(run_id).status
        except ValueError:  # a run gone, or the history unusable (StoreUnavailableError is one)
            status = "unreadable"
        statuses.setdefault(status, []).append(run_id)
    parts = []
    for status, ids in statuses.items():
        if status == "interrupted":
            which = "the partial run is" if len(ids) == 1 else "the partial runs are"
            parts.append(f"{which} stored as {_ids(ids)}, marked interrupted")
            with_models = [i for i in ids if store.kept_models(i)]  # a file it cannot stat counts as none
            if with_models:
                parts[-1] += (f", with the models trained so far (facto runs export {with_models[0]} "
                              "--model FILE)")
        elif status == "unreadable":
            parts.append(f"{_ids(ids)} could not be read back from the history")
        else:
            parts.append(f"{_ids(ids)} {'is' if len(ids) == 1 else 'are'} stored, {status}")
    return f"{head}: " + "; ".join(parts)
