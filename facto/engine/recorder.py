"""Store a run as it happens: a subscriber between a run's events and whoever draws them.

`record(events, store)` yields the same events; on the way it writes them to the run
history (`facto.store.history.RunStore`) and fills `run_id` into the start and summary events.
The run is stored from its first event on (a `PhaseEvent` as it loads its data). Closing the
stream early (Stop, Ctrl-C) or a stop request inside a phase (`facto.engine.stopping.RunStopped`)
stores the run as 'interrupted' with every step so far, and keeps the models trained so far (the
`ModelsEvent` a stopped `compare` sends; on a closed stream it is asked for by throwing RunStopped
into the source);
an exception stores it as 'failed' with the error, then propagates.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Iterator

from ..store.files import StoreUnavailableError
from . import distributed
from .events import EvalEvent, Event, ModelsEvent, PhaseEvent, RunTracker, StartEvent, StepEvent, SummaryEvent
from .stopping import RunStopped, stop_reason

if TYPE_CHECKING:
    from ..store.history import RunStore

FLUSH_EVERY = 20  # metric rows buffered before one write transaction
_ROW_FIELDS = ("variant", "step", "epoch", "type")


def record(events: Iterator[Event], store, kind: str | None = None) -> Iterator[Event]:
    """Yield `events`, storing them in `store` (None: pass through). `kind`: compare | single."""
    if store is None:
        yield from events
        return
    if not callable(getattr(store, "start_run", None)):
        raise ValueError(f"store={store!r} is not allowed: use a facto.RunStore or None")
    tracker = RunTracker()
    run_id: int | None = None
    pending: list[tuple] = []
    status, error = "interrupted", None
    store_failed = False  # the store itself failed: nothing more can be written to it
    try:
        for event in events:
            tracker.add(event)
            if isinstance(event, PhaseEvent) and distributed.is_main_process():
                if run_id is None:
                    run_id = store.start_run(event.config, kind=kind or _kind(event.variants))
                event.run_id = run_id
            elif isinstance(event, StartEvent) and distributed.is_main_process():
                if run_id is None:
                    run_id = store.start_run(event.config, kind=kind or _kind(event.params))
                event.run_id = tracker.start.run_id = run_id
                for variant, sizes in event.layer_bytes.items():
                    store.log_layers(run_id, variant, sizes)
            elif isinstance(event, (StepEvent, EvalEvent)) and run_id is not None:
                pending.append(_row(event))
                if isinstance(event, EvalEvent) or len(pending) >= FLUSH_EVERY:
                    _flush(store, run_id, pending)
            elif isinstance(event, ModelsEvent):
                event = _keep(store, run_id, event, tracker)
            elif isinstance(event, SummaryEvent):
                event.run_id = run_id
                status = event.status
            yield event
        if status == "interrupted":  # the source ended without a summary
            status = "completed" if tracker.steps else "failed"
    except GeneratorExit:
        status, error = "interrupted", stop_reason()  # closed for a stop request, or by its reader
        if run_id is not None and not store_failed:
            _keep_on_close(events, store, run_id, tracker, error)
        events.close()
        raise
    except RunStopped as stop:  # a stop request reached the run inside a phase
        status, error = "interrupted", stop.reason
        raise
    except BaseException as exc:  # KeyboardInterrupt too: the run stays in the history
        if isinstance(exc, KeyboardInterrupt):
            status = "interrupted"
        else:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        store_failed = isinstance(exc, StoreUnavailableError)
        raise
    finally:
        if run_id is not None and not store_failed:  # a second store error would hide the first
            _flush(store, run_id, pending)
            summary = tracker.summary(status) if tracker.steps else None
            if error is None and tracker.failures:
                error = "; ".join(f"{v} failed: {why}" for v, why in tracker.failures.items())
            store.finish_run(run_id, status, asdict(summary) if summary else None, error)


def _keep(store, run_id: int | None, event: ModelsEvent, tracker: RunTracker) -> ModelsEvent:
    """Keep the trained models with the run (unless its config says not to); the event passed on
    carries the files' sizes, not the weights."""
    config = tracker.start.config if tracker.start else {}
    if run_id is None or not event.states or not config.get("keep_models", True) or not distributed.is_main_process():
        return ModelsEvent({}, {}, run_id)
    try:
        kept = {v: m.bytes for v, m in store.keep_models(run_id, event.states).items()}
    except (ValueError, OSError) as exc:  # the run itself is done and stored: only its models are lost
        return ModelsEvent({}, {}, run_id, f"the trained models could not be kept: {exc}")
    return ModelsEvent({}, kept, run_id)


def _keep_on_close(events: Iterator[Event], store, run_id: int, tracker: RunTracker, reason: str | None) -> None:
    """Ask a source that is being closed for the weights it trained so far (RunStopped thrown into it:
    `compare` answers with a ModelsEvent while it is in its steps) and keep them."""
    throw = getattr(events, "throw", None)
    if throw is None:
        return
    try:
        event = throw(RunStopped(reason or "the run's reader closed it"))
    except (RunStopped, Exception):  # not in its steps (nothing trained), or an error: only the models are lost
        return
    if isinstance(event, ModelsEvent):
        _keep(store, run_id, event, tracker)


def _kind(variants) -> str:
    """compare (baseline and Facto) or single (one variant)."""
    return "compare" if len(variants) > 1 else "single"


def _row(event: StepEvent | EvalEvent) -> tuple:
    metrics = {k: v for k, v in asdict(event).items() if k not in _ROW_FIELDS}
    if isinstance(event, EvalEvent):
        metrics["accuracy"] = metrics.pop("test_accuracy")
        metrics["loss"] = metrics.pop("test_loss")
        return (event.variant, "eval", event.step, event.epoch, metrics)
    return (event.variant, "step", event.step, event.epoch, metrics)


def _flush(store, run_id: int, pending: list) -> None:
    if pending:
        store.log_metrics(run_id, list(pending))
        pending.clear()


@contextmanager
def history_at(path: str | None) -> Iterator[RunStore | None]:
    """The RunStore at `path` (None: no store), closed afterwards: for streams run in a child
    process, which opens its own connection (see facto.engine.jobs.in_child)."""
    from ..store.history import RunStore

    store = RunStore(path) if path else None
    try:
        yield store
    finally:
        if store is not None:
            store.close()
