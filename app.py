"""Facto — train & compare: the dense baseline and Facto side by side, live.

The entry point: it sets up the navigation (this page, then pages/1_Sweep ... 4_History).
Layout only: numbers come from `facto.train` / `facto.store`, figures from `facto.plots`.

How the live run works: Run builds a `RunConfig` and starts a `Job`, kept in
`st.session_state`: a worker thread iterates the `compare()` generator and appends each
event to the job (it never calls Streamlit, so it needs no ScriptRunContext). A fragment
re-runs itself every REFRESH_S seconds while the job runs and redraws only itself from
what has arrived (no full-page flicker). Reruns, widget clicks and page switches never
touch the thread, so training is never restarted or paused by them. Stop sets a flag;
the worker closes the generator after the current step, `compare` stores the run as
'interrupted', and what was done stays on screen.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict

import pandas as pd
import streamlit as st
import torch

from facto import plots
from facto.data import dataset_info, list_datasets, load_data
from facto.factorize import rank_from_text
from facto.models import create_model, list_models, model_info
from facto.store import RunStore, default_db_path
from facto.train import (PRESETS, EvalEvent, RunConfig, RunTracker, StartEvent, StepEvent, SummaryEvent,
                         compare, device_name, resolve_device)

log = logging.getLogger("facto.app")

REFRESH_S = 1.0  # how often the live panel redraws while a run goes
STOP_WAIT_S = 15.0  # how long Stop waits for the current step to end before it returns
STALE_AFTER_S = 900  # a 'running' run without a write for this long belongs to a dead process
DEFAULTS = RunConfig()
PRESET_KEYS = ("rank", "update", "bits", "recompute")
PRESET_TAGLINE = {"paper": "the paper's recipe", "balanced": "the measured default",
                  "max-saving": "least memory", "custom": "your own settings"}
BITS_OPTIONS = [None, 1, 2, 3, 4, 5, 6, 7, 8, 16]
UPDATE_HELP = ("Which factor trains in each layer; only its input is stored for backward. "
               "core: stores the rank-sized input of the core (big saving, trains well). "
               "last: stores the rank-sized map after the stride (least memory, trains worse from scratch). "
               "first: stores the full input (no saving from factorization). "
               "all: trains every factor (plain low-rank training, stores the most). "
               "cycle: core, last, first in turn, one per epoch.")

st.set_page_config(page_title="Facto", page_icon=":material/memory:", layout="wide")


# ----------------------------------------------------------------------------- store

@st.cache_resource(show_spinner=False)
def _open_store(path: str) -> RunStore:
    """One store per database file and process; runs left 'running' by a dead process are closed."""
    store = RunStore(path)
    store.mark_stale_running(max_age_s=STALE_AFTER_S)
    return store


def get_store() -> RunStore:
    return _open_store(str(default_db_path()))


class _RunIds:
    """The store as `compare` sees it, remembering the id of the run it starts."""

    def __init__(self, store: RunStore) -> None:
        self._store = store
        self.run_id: int | None = None

    def start_run(self, *args, **kwargs) -> int:
        self.run_id = self._store.start_run(*args, **kwargs)
        return self.run_id

    def __getattr__(self, name: str):
        return getattr(self._store, name)


# ----------------------------------------------------------------------------- a run in progress

class Job:
    """One comparison, trained by a worker thread; the UI only reads what has arrived."""

    def __init__(self, config: RunConfig, store: RunStore) -> None:
        self.config = config
        self.store = _RunIds(store)
        self.tracker = RunTracker()
        self.steps: list[dict] = []
        self.evals: list[dict] = []
        self.status = "running"  # running | completed | interrupted | failed
        self.summary: dict | None = None
        self.error: str | None = None
        self.events = 0  # changes whenever something new arrived (cheap redraw check)
        self.remembered = False  # added to this session's saving-vs-accuracy points
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="facto-compare", daemon=True)
        self._thread.start()

    @property
    def run_id(self) -> int | None:
        return self.store.run_id

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() and self.status == "running"

    def _work(self) -> None:
        """The worker: consume `compare` until it ends, fails or is asked to stop."""
        events = compare(self.config, store=self.store)
        try:
            for event in events:
                self._add(event)
                if self._stop.is_set():
                    events.close()  # GeneratorExit inside compare: stored as 'interrupted'
                    self._finish("interrupted")
                    return
            self._finish("completed")
        except ValueError as exc:  # bad combination, dataset not on disk, device not there
            self._finish("failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - shown to the user; the store keeps it as failed
            log.exception("training failed")
            self._finish("failed", f"training failed: {type(exc).__name__}: {exc}")

    def _add(self, event) -> None:
        with self._lock:
            self.tracker.add(event)
            if isinstance(event, StepEvent):
                self.steps.append(asdict(event))
            elif isinstance(event, EvalEvent):
                self.evals.append(asdict(event))
            elif isinstance(event, SummaryEvent):
                self.summary = asdict(event)
            self.events += 1

    def _finish(self, status: str, error: str | None = None) -> None:
        with self._lock:
            if self.tracker.steps and (self.summary is None or status != "completed"):
                self.summary = asdict(self.tracker.summary(status))
            self.error = error
            self.events += 1
            self.status = status  # last: readers see a finished job only once it is complete

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """Ask the worker to stop after the current step (and wait for it a little)."""
        self._stop.set()
        self._thread.join(wait_s)

    def wait(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    def view(self) -> dict:
        """What the panel draws, in the same shape as a stored run's view."""
        with self._lock:
            start: StartEvent | None = self.tracker.start
            summary = self.summary
            if summary is None and self.tracker.steps:
                summary = asdict(self.tracker.summary(self.status))
            steps, evals = list(self.steps), list(self.evals)
        return dict(
            source="session", status=self.status, config=self.config.to_dict(), run_id=self.run_id,
            steps=steps, evals=evals, summary=summary, error=self.error, stopping=self.stopping,
            layer_bytes=start.layer_bytes if start else {}, report=start.report if start else [],
            total_steps=start.total_steps if start else None,
            steps_per_epoch=start.steps_per_epoch if start else None,
            device=start.device_name if start else None, device_type=start.device if start else None,
            params=start.params if start else {}, trainable=start.trainable_params if start else {},
            train_size=start.train_size if start else None, test_size=start.test_size if start else None)


def stored_view(store: RunStore) -> dict | None:
    """The latest finished comparison from the run store (results survive a restart)."""
    for run in store.list_runs(kind="compare", limit=20):
        if run.status in ("completed", "interrupted"):
            evals = store.metrics(run.id, kind="eval")
            return dict(
                source="history", status=run.status, config=run.config, run_id=run.id,
                steps=store.metrics(run.id, kind="step"), evals=evals, summary=run.summary, error=run.error,
                layer_bytes=store.layer_bytes(run.id), report=[], total_steps=None, steps_per_epoch=None,
                device=None, device_type=None, params=(run.summary or {}).get("params", {}), trainable={},
                train_size=None, test_size=None)
    return None


# ----------------------------------------------------------------------------- controls


def _widget_value(key: str, value):
    return str(value) if key == "rank" else value


def apply_preset() -> None:
    name = st.session_state["preset"]
    if name in PRESETS:
        for key in PRESET_KEYS:
            st.session_state[key] = _widget_value(key, PRESETS[name].get(key, getattr(DEFAULTS, key)))


def match_preset() -> None:
    """After a hand edit of rank/update/bits/recompute: the preset they match, else custom."""
    current = {k: st.session_state.get(k) for k in PRESET_KEYS}
    for name, values in PRESETS.items():
        wanted = {k: _widget_value(k, values.get(k, getattr(DEFAULTS, k))) for k in PRESET_KEYS}
        if str(current["rank"]).strip() == wanted["rank"] and all(
                current[k] == wanted[k] for k in PRESET_KEYS if k != "rank"):
            st.session_state["preset"] = name
            return
    st.session_state["preset"] = "custom"


def config_from_state() -> RunConfig:
    """The RunConfig the sidebar describes (ValueError with the fix when a value is bad)."""
    s = st.session_state
    return RunConfig(
        model=s["model"], dataset=s["dataset"], rank=rank_from_text(s["rank"]), update=s["update"],
        bits=s["bits"], block=int(s["block"]), recompute=bool(s["recompute"]), epochs=int(s["epochs"]),
        batch_size=int(s["batch_size"]), lr=float(s["lr"]), optimizer=s["optimizer"], schedule=s["schedule"],
        seed=int(s["seed"]), device=s["device"], eval_every=int(s["eval_every"]),
        warm_start_steps=int(s["warm_start_steps"]), data_dir=str(s["data_dir"]).strip(),
        download=bool(s["download"]), max_train=int(s["max_train"]) or None, max_test=int(s["max_test"]) or None)


def start_run() -> None:
    st.session_state.pop("form_error", None)
    job = st.session_state.get("job")
    if job is not None and job.status == "running":
        return
    try:
        config = config_from_state()
    except ValueError as exc:
        st.session_state["form_error"] = str(exc)
        return
    st.session_state["job"] = Job(config, get_store())


def stop_run() -> None:
    job = st.session_state.get("job")
    if job is not None and job.status == "running":
        job.stop()  # returns once the worker closed the run (or after STOP_WAIT_S: the panel shows 'stopping')
        remember(job)


def remember(job: Job) -> None:
    """Add a finished run to this session's points of the saving-vs-accuracy chart."""
    if job.status == "running" or job.remembered:
        return
    job.remembered = True
    summary = job.summary or {}
    if summary.get("saving_pct") is None or summary.get("accuracy_delta") is None:
        return  # stopped before the first test: no accuracy to plot
    acc = summary.get("accuracy") or {}
    st.session_state.setdefault("session_points", []).append(dict(
        saving_pct=summary["saving_pct"], accuracy_delta=summary["accuracy_delta"], id=job.run_id, source="session",
        label=(f"run #{job.run_id} ({job.status})<br>{plots.config_label(job.config.to_dict())}"
               f"<br>baseline {acc.get('baseline', 0):.1f} % → Facto {acc.get('facto', 0):.1f} %")))


def available_devices() -> list[str]:
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def preset_text(name: str | None) -> str:
    """'balanced: rank 0.5, train core, 4-bit maps, recompute BN (the measured default)'."""
    tag = PRESET_TAGLINE.get(name, "")
    if name not in PRESETS:
        return f"{name}: {tag}" if name else ""
    p = {k: PRESETS[name].get(k, getattr(DEFAULTS, k)) for k in PRESET_KEYS}
    bits = "fp32 maps" if p["bits"] is None else f"{p['bits']}-bit maps"
    text = f"rank {p['rank']}, train {p['update']}, {bits}" + (", recompute BN" if p["recompute"] else "")
    return f"{name}: {text}" + (f" ({tag})" if tag else "")


def options(values: list, default) -> list:
    """Slider options that always include the RunConfig default."""
    return sorted({*values, default})


def default_state() -> dict:
    """Initial value of every control: the RunConfig defaults (the 'balanced' preset)."""
    d = DEFAULTS
    values = {k: _widget_value(k, getattr(d, k)) for k in (
        "model", "dataset", "rank", "update", "bits", "recompute", "epochs", "seed", "batch_size", "lr",
        "device", "warm_start_steps", "block", "eval_every", "optimizer", "schedule", "data_dir", "download")}
    values.update(max_train=d.max_train or 0, max_test=d.max_test or 0, history_points=False)
    values["preset"] = "custom"
    values["preset"] = next((name for name, p in PRESETS.items() if all(
        _widget_value(k, p.get(k, getattr(d, k))) == values[k] for k in PRESET_KEYS)), "custom")
    return values


def sidebar(running: bool) -> None:
    for key, value in default_state().items():
        st.session_state.setdefault(key, value)
    keep = dict(disabled=running, persist_state="session")
    with st.sidebar:
        left, right = st.columns(2)
        left.button("Run", key="run", type="primary", on_click=start_run, disabled=running, width="stretch",
                    icon=":material/play_arrow:", help="Train the baseline and Facto side by side.")
        right.button("Stop", key="stop", on_click=stop_run, disabled=not running, width="stretch",
                     icon=":material/stop:", help="Stop now. What was done is kept (stored as interrupted).")
        st.segmented_control("Preset", [*PRESETS, "custom"], key="preset", on_change=apply_preset, required=True,
                             **keep, help="One click sets rank, update, bits and recompute. Editing one of "
                                          "them by hand switches to custom.")
        st.caption(preset_text(st.session_state.get("preset")))
        models = list_models()
        st.selectbox("Model", models, key="model", **keep,
                     help="The CNN to train twice (dense and Facto). Deeper and wider models keep more "
                          "feature maps, so they have more to save. "
                          + " | ".join(f"{m}: {model_info(m)}" for m in models[:3]))
        datasets = list_datasets()
        st.selectbox("Dataset", datasets, key="dataset", **keep,
                     help="digits ships with scikit-learn and works offline (1,400 train / 397 test images). "
                          "The others are read from the data folder (Advanced).")
        st.text_input("Rank", key="rank", on_change=match_preset, **keep,
                      help="Size of each factor: a fraction of the channels (0.5), a number of channels (16), "
                           "'energy:0.9' (keep 90 % of the weight energy) or 'vbmf'. Lower rank: fewer channels "
                           "stored for backward (less memory), fewer trained weights (may cost accuracy).")
        updates = ["core", "last", "first", "all", "cycle"]
        st.selectbox("Trained factor (update)", updates, key="update",
                     on_change=match_preset, help=UPDATE_HELP, **keep)
        st.selectbox("Bits per stored value", BITS_OPTIONS, key="bits",
                     on_change=match_preset, **keep,
                     format_func=lambda b: "none (fp32, no compression)" if b is None
                     else ("16 (half precision)" if b == 16 else f"{b} bits"),
                     help="Facto compresses what it stores to this many bits per value, block by block. "
                          "Fewer bits: less memory, noisier gradients. ReLU keeps a lossless 1-bit mask always.")
        st.checkbox("Recompute BatchNorm inputs", key="recompute",
                    on_change=match_preset, **keep,
                    help="Don't store BatchNorm inputs: recompute them in backward from the stored factor "
                         "input (one cheap 1x1 conv). Less memory, a little more compute.")
        left, right = st.columns(2)
        left.number_input("Epochs", min_value=1, max_value=500, step=1, key="epochs",
                          **keep, help="Passes over the training set: more epochs, higher accuracy, longer run. "
                                       "Memory per step does not change.")
        right.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="seed",
                           **keep, help="Same seed, same initial weights and batches. Baseline and Facto always "
                                        "start from the same weights.")
        st.select_slider("Batch size", options([8, 16, 32, 64, 128, 256, 512], DEFAULTS.batch_size), key="batch_size", **keep,
                         help="Images per step. Activation memory grows in proportion, for both variants.")
        st.select_slider("Learning rate", options([1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1], DEFAULTS.lr),
                         key="lr",
                         format_func=lambda v: f"{v:g}", **keep,
                         help="Peak learning rate of the schedule. Too high diverges, too low learns slowly. "
                              "No effect on memory.")
        devices = available_devices()
        left, right = st.columns(2)
        left.selectbox("Device", devices, key="device", **keep,
                       help="auto picks a GPU when there is one. Stored bytes are the same on every device; "
                            "on CUDA the allocator's peak is shown too.")
        right.number_input("Warm-up steps", min_value=0, max_value=100_000, step=10,
                           key="warm_start_steps", **keep,
                           help="Train the dense model this many steps before factorizing it. Trained weights "
                                "factorize with less error, so Facto starts closer to the baseline. Costs time, "
                                "not memory.")
        with st.expander("Advanced: subset, blocks, testing, data"):
            a, b = st.columns(2)
            a.number_input("Train images (0 = all)", min_value=0, max_value=10_000_000, step=64,
                           key="max_train", **keep,
                           help="Train on a fixed random subset of this many images: quick demos. "
                                "Memory per step does not change.")
            b.number_input("Test images (0 = all)", min_value=0, max_value=10_000_000, step=64,
                           key="max_test", **keep, help="Test on a fixed random subset: faster testing, "
                                                         "noisier accuracy.")
            st.select_slider("Block size", options([16, 32, 64, 128, 256, 512, 1024], DEFAULTS.block),
                             key="block",
                             **keep, help="Values per quantization block; each block stores its own min and "
                                          "scale. Smaller blocks: less error, more metadata bytes.")
            st.number_input("Test every N steps (0 = each epoch)", min_value=0, max_value=100_000,
                            step=5, key="eval_every", **keep,
                            help="More frequent tests give smoother accuracy curves but cost time.")
            a, b = st.columns(2)
            optimizers, schedules = ["adam", "adamw", "sgd"], ["onecycle", "cosine", "constant"]
            a.selectbox("Optimizer", optimizers, key="optimizer",
                        **keep, help="Adam and AdamW keep two extra values per trained weight, SGD one.")
            b.selectbox("Schedule", schedules, key="schedule", **keep,
                        help="Short runs need a schedule: one-cycle warms up then anneals.")
            st.text_input("Data folder", key="data_dir", **keep,
                          help="Where torchvision datasets are read from (digits needs none).")
            st.checkbox("Download a missing dataset", key="download", **keep,
                        help="Needs internet; without it, missing files are an error with the fix.")
        st.caption(f"Run history: `{default_db_path()}`")


# ----------------------------------------------------------------------------- header

@st.cache_data(show_spinner=False)
def model_params(model: str, dataset: str) -> int | None:
    info = dataset_info(dataset)
    torch.manual_seed(0)
    return sum(p.numel() for p in create_model(model, info.num_classes, info.in_channels).parameters())


@st.cache_data(show_spinner=False)
def layer_types(model: str, dataset: str) -> dict[str, str]:
    info = dataset_info(dataset)
    net = create_model(model, info.num_classes, info.in_channels)
    return {name: type(m).__name__ for name, m in net.named_modules() if name}


@st.cache_data(show_spinner=False, max_entries=16)
def data_sizes(dataset: str, data_dir: str, max_train: int, max_test: int) -> tuple[int, int] | str:
    """(train, test) image counts, or the reason the data can't be read."""
    try:
        bundle = load_data(dataset, data_dir, batch_size=1, max_train=max_train or None,
                           max_test=max_test or None)
    except ValueError as exc:
        return str(exc)
    return bundle.train_size, bundle.test_size


def describe_device(choice: str) -> str:
    try:
        return device_name(resolve_device(choice))
    except ValueError as exc:
        return str(exc)


def header(view: dict | None) -> None:
    s = st.session_state
    live = view is not None and view["source"] == "session" and view.get("device")
    if live:
        cfg = view["config"]
        device, params = view["device"], view["params"]
        size = (f"{view['train_size']:,} train / {view['test_size']:,} test images")
        model = (f"{cfg['model']}: {params.get('baseline', 0):,} params dense → {params.get('facto', 0):,} "
                 f"factorized ({view['trainable'].get('facto', 0):,} trained)")
        dataset = cfg["dataset"]
    else:
        device = describe_device(s.get("device", "auto"))
        dataset = s.get("dataset", DEFAULTS.dataset)
        n = model_params(s.get("model", DEFAULTS.model), dataset)
        model = f"{s.get('model', DEFAULTS.model)}: {n:,} params"
        sizes = data_sizes(dataset, str(s.get("data_dir", DEFAULTS.data_dir)).strip(),
                           int(s.get("max_train", 0) or 0), int(s.get("max_test", 0) or 0))
        size = f"{sizes[0]:,} train / {sizes[1]:,} test images" if isinstance(sizes, tuple) else "not on disk"
    st.markdown(f":material/developer_board: **Device** {device} &nbsp;·&nbsp; :material/neurology: **Model** "
                f"{model} &nbsp;·&nbsp; :material/photo_library: **Data** {dataset}, {size}")


# ----------------------------------------------------------------------------- the live panel

def _mb(value) -> str:
    return "—" if value is None else f"{value / plots.MB:,.2f} MB"


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1f} %"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def progress(view: dict) -> None:
    steps, total = view["steps"], view["total_steps"]
    if view["status"] != "running":
        return
    if total is None:
        st.progress(0.0, text="Loading data, building and factorizing the model… (the first step follows)")
        return
    done = max((r["step"] for r in steps if r["variant"] != "warmup"), default=0)
    summary = view["summary"] or {}
    per_step = sum((summary.get("step_seconds") or {}).values())
    epochs = math.ceil(total / view["steps_per_epoch"])
    epoch = max((r["epoch"] for r in steps), default=1)
    text = f"Step {done} of {total} · epoch {epoch} of {epochs}"
    if per_step and done:
        text += f" · {per_step:.2f} s per step (both variants) · about {_duration(per_step * (total - done))} left"
    if view.get("stopping"):
        text = f"Stopping after step {done} of {total}: the current step finishes first…"
    st.progress(min(done / total, 1.0), text=text)


def status_line(view: dict) -> None:
    status, summary, run = view["status"], view["summary"] or {}, view["run_id"]
    stored = f" Stored as run #{run}." if run is not None else ""
    if status == "completed":
        saving, delta = summary.get("saving_pct"), summary.get("accuracy_delta")
        text = "Done."
        if saving is not None:
            text = f"Done: Facto stored {saving:.1f} % less for backward"
            text += f", accuracy {delta:+.2f} points vs the baseline." if delta is not None else "."
        st.success(text + stored, icon=":material/check_circle:")
    elif status == "interrupted":
        steps = summary.get("steps") or {}
        done = max(steps.values(), default=0)
        total = f" of {view['total_steps']}" if view["total_steps"] else ""
        st.warning(f"Stopped after {done}{total} steps; what was done is kept.{stored}", icon=":material/pause_circle:")
    elif status == "failed":
        st.error(f"The run could not go on: {view['error']}", icon=":material/error:")


def metrics(view: dict) -> None:
    summary = view["summary"] or {}
    act = summary.get("act_bytes") or {}
    acc = dict(summary.get("accuracy") or {})
    base_b, facto_b = act.get("baseline"), act.get("facto")
    delta_b = None if base_b is None or facto_b is None else f"{(facto_b - base_b) / plots.MB:+,.2f} MB"
    acc_delta = summary.get("accuracy_delta")
    peak = summary.get("peak_cuda") or {}
    show_peak = any(v is not None for v in peak.values())
    width = 4 if show_peak else 3
    memory, accuracy = st.columns(width), st.columns(width)
    memory[0].metric("Baseline activations", _mb(base_b), border=True,
                     help="Bytes autograd keeps for backward after one forward pass of a batch (dense fp32).")
    memory[1].metric("Facto activations", _mb(facto_b), delta=delta_b, delta_color="inverse", border=True,
                     help="The same for Facto: one factor's input per layer, compressed, plus 1-bit ReLU masks.")
    memory[2].metric("Memory saving", _pct(summary.get("saving_pct")), border=True,
                     delta=f"{base_b / facto_b:.1f}× less stored" if base_b and facto_b else None,
                     delta_arrow="off", help="1 − Facto / baseline activation bytes.")
    accuracy[0].metric("Baseline accuracy", _pct(acc.get("baseline")), border=True,
                       help="Test accuracy, measured at the end of each epoch (Advanced: test more often).")
    accuracy[1].metric("Facto accuracy", _pct(acc.get("facto")), border=True,
                       delta=None if acc_delta is None else f"{acc_delta:+.2f} points",
                       help="Test accuracy of the Facto model; the delta is against the baseline.")
    accuracy[2].metric("Accuracy change", "—" if acc_delta is None else f"{acc_delta:+.2f} points", border=True,
                       help="Facto minus baseline test accuracy, in percentage points.")
    if show_peak:
        pb, pf = peak.get("baseline"), peak.get("facto")
        memory[3].metric("Peak CUDA memory (Facto)", _mb(pf), border=True, delta_color="inverse",
                         delta=None if pb is None or pf is None else f"{(pf - pb) / plots.MB:+,.1f} MB",
                         help="torch.cuda.max_memory_allocated during a Facto step; the delta is against the "
                              "baseline's peak. This is what the GPU must hold.")


def charts(view: dict) -> None:
    chart = dict(theme=None, config={"displaylogo": False})
    left, right = st.columns(2)
    left.plotly_chart(plots.accuracy_curves(view["steps"], view["evals"]), key="chart_accuracy", **chart)
    right.plotly_chart(plots.memory_curves(view["steps"]), key="chart_memory", **chart)
    left, right = st.columns(2)
    cfg = view["config"]
    types = layer_types(cfg.get("model", DEFAULTS.model), cfg.get("dataset", DEFAULTS.dataset))
    left.plotly_chart(plots.layer_bytes_bars(view["layer_bytes"], types), key="chart_layers", **chart)
    with right:
        points = list(st.session_state.get("session_points", []))
        if st.session_state.get("history_points"):
            seen = {p.get("id") for p in points}
            points += [p for p in plots.tradeoff_points(get_store().list_runs(kind="compare"))
                       if p["id"] not in seen]
        live = plots.live_point(view["steps"], view["evals"], cfg) if view["status"] == "running" else None
        st.plotly_chart(plots.tradeoff_scatter(points, live), key="chart_tradeoff", **chart)
        st.checkbox("Show earlier runs from the history", key="history_points", persist_state="session",
                    help="Adds every stored comparison (grey) to the chart.")
    if view["report"]:
        with st.expander("Factorization report: which layers were factorized, ranks, errors"):
            rows = pd.DataFrame(view["report"])
            rows["weight_shape"] = rows["weight_shape"].map(lambda s: "×".join(map(str, s)))
            rows["ranks"] = rows["ranks"].map(lambda r: "" if r is None else f"{r[0]}, {r[1]}")
            st.dataframe(rows[["name", "kind", "layer_type", "weight_shape", "ranks", "params_before",
                               "params_after", "trainable_params", "rel_error", "update", "reason"]],
                         hide_index=True, column_config={
                             "rel_error": st.column_config.NumberColumn("reconstruction error", format="%.3f")})


def live_panel() -> None:
    """Draw everything the job has so far (re-run every REFRESH_S seconds while it trains)."""
    job: Job | None = st.session_state.get("job")
    if job is not None and job.status != "running" and st.session_state.get("controls_locked"):
        remember(job)
        st.rerun(scope="app")  # the run ended: redraw the whole page (controls enabled again)
    view = job.view() if job is not None else None
    header(view)
    if st.session_state.get("form_error"):
        st.error(f"Can't start this run: {st.session_state['form_error']}", icon=":material/error:")
    if view is None:
        view = stored_view(get_store())
        if view is not None:
            st.info(f"Showing the last stored run #{view['run_id']} ({plots.config_label(view['config'])}). "
                    "Press **Run** to start a new one.", icon=":material/history:")
    if view is None:
        st.info("Choose the settings on the left and press **Run**: the dense baseline (blue) and Facto "
                "(orange) train side by side from the same weights on the same batches.",
                icon=":material/play_circle:")
        return
    if view["status"] == "failed" and not view["steps"]:
        status_line(view)
        return
    progress(view)
    status_line(view)
    metrics(view)
    charts(view)


# ----------------------------------------------------------------------------- page

def train_and_compare() -> None:
    """The main page: sidebar controls, header line, live panel."""
    job: Job | None = st.session_state.get("job")
    running = job is not None and job.status == "running"
    st.session_state["controls_locked"] = running
    if job is not None:
        remember(job)  # once it has ended
    st.title("Facto · train & compare")
    st.caption("Facto factorizes each conv layer, trains one factor and stores fewer, smaller feature maps "
               "for backward. Baseline: dense fp32 (blue). Facto: orange.")
    sidebar(running)
    st.fragment(run_every=REFRESH_S if running else None)(live_panel)()


get_store()  # opens the history (and closes runs a dead process left 'running')
st.navigation([
    st.Page(train_and_compare, title="Train & compare", icon=":material/compare_arrows:", default=True),
    st.Page("pages/1_Sweep.py", title="Sweep", icon=":material/grid_on:", url_path="sweep"),
    st.Page("pages/2_Layers.py", title="Layers", icon=":material/layers:", url_path="layers"),
    st.Page("pages/3_Compression.py", title="Compression", icon=":material/compress:", url_path="compression"),
    st.Page("pages/4_History.py", title="History", icon=":material/history:", url_path="history"),
]).run()
