"""Shared pieces of the Streamlit pages: every page's start (`page`: tab title, sidebar navigation),
server-wide state, widgets made from the settings, visitors and room mode (its settings read by
`room`, kept here once per server). Layout helpers only: numbers come from `facto`, figures from
`facto.plots`.

Server-wide (one per `streamlit run` process, shared by every browser tab):
- the job registry: runs belong to the server, not to a tab; a tab watches one;
- the run history (or the reason it is off);
- a cache of built figures per job and version, so three tabs watching one run build
  each figure once.

A visitor is their browser: the key of Streamlit's XSRF cookie, which the server sets on the
browser's first request and every tab of that browser sends back, turned into an id with a
secret of this server (`visitor_id`). It never appears in a URL, so a copied or shared link
(`?job=N`, `?sweep=N`) lets another browser watch a run but not stop or delete it, and every tab
of one browser is the same visitor (its runs, its Stop, one run at a time across tabs). A
browser that sends no such cookie (XSRF protection off, cookies blocked) is one visitor per tab.
The server remembers which stored runs each visitor started (`runs_started_by`): in room mode a
visitor sees and deletes only those.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import streamlit as st

import room as _room
from facto.config import SETTINGS, RunConfig, Setting, count
from facto.engine.estimate import RunWork, run_work
from facto.engine.events import PhaseEvent, StartEvent
from facto.engine.jobs import Job, JobRegistry, in_child
from room import (PageLimits, Room, ascii_int, env_problems, jobs_mode, max_runs,  # noqa: F401 (the pages use ui.*)
                  room_problems)

# Plotly's toolbar (modebar) is off: it showed over a chart's title on hover, and in a column half
# the page wide (a projector's 1024 px, sidebar open) it covered most of it. Zoom by dragging and a
# double click to reset still work; Streamlit's own toolbar above the chart opens it full screen.
CHART = dict(theme=None, config={"displaylogo": False, "displayModeBar": False})
# The browser tab's icon. An emoji: Streamlit draws it locally, where a ":material/...:" favicon is
# fetched from Google's font CDN on every page load (an offline classroom logs errors, and every
# student's browser calls Google).
PAGE_ICON = "🗜️"
CARD = dict(border=True, height="stretch")  # every metric card: framed, as tall as its row
REFRESH_S = 2.0  # progress and cards while a watched run goes
CHART_REFRESH_S = 5.0  # charts while it goes (built at most once per interval for every tab)
LIVE_CHART_WIDTH = 480  # a half-width chart drawn as a picture while a run goes: about its width on a laptop
#                        (the picture is scaled to the column, its text with it)

# While a fragment redraws, Streamlit marks its elements "stale" and fades them (an opacity
# transition, 1 s after a 0.5 s delay), and the progress bar slides to its new width. On a page
# redrawn every few seconds that fade adds nothing, and a browser that paints without a GPU on
# the machine that also trains (one laptop in a classroom) spends the training's cores painting it.
LIVE_VIEW_STYLE = ("<style>[data-stale='true']{opacity:1!important;transition:none!important}"
                   "[data-testid='stProgress'] *{transition:none!important}</style>")

# Every page's metric cards (st.html(CARD_STYLE) once a page): a card is at least 12rem wide, so a
# row of four wraps into two rows of two where the page is narrow (1024 px, sidebar open) instead of
# cutting labels and values to "Dense lay…" "2.62…"; a label wraps onto a second line rather than
# ending in an ellipsis, and a value's size follows its card's width (at most Streamlit's 2.25rem).
CARD_STYLE = ("<style>[data-testid='stColumn']:has(> [data-testid='stVerticalBlock'] > "
              "[data-testid='stElementContainer'] > [data-testid='stMetric']){min-width:min(12rem,100%)}"
              "[data-testid='stMetric']{container-type:inline-size}"
              "[data-testid='stMetricValue']{font-size:min(2.25rem,14cqi)}"
              "[data-testid='stMetricLabel'] [data-testid='stMarkdownContainer'],"
              "[data-testid='stMetricLabel'] p{white-space:normal}</style>")


# ----------------------------------------------------------------------------- pages

# The sidebar's navigation: page file (beside app.py), label, icon. Streamlit's file-based
# multipage app registers app.py and every pages/*.py on each script run, a server's first one
# included, so a deep link opens its page; a page's URL is its file name after the number
# (pages/6_fit-my-gpu.py: /fit-my-gpu). Streamlit's own navigation, labelled with the file names,
# is hidden (.streamlit/config.toml: showSidebarNavigation).
PAGES = (
    ("app.py", "Train & compare", ":material/compare_arrows:"),
    ("pages/1_sweep.py", "Sweep", ":material/grid_on:"),
    ("pages/2_layers.py", "Layers", ":material/layers:"),
    ("pages/3_compression.py", "Compression", ":material/compress:"),
    ("pages/4_history.py", "History", ":material/history:"),
    ("pages/5_how-it-works.py", "How it works", ":material/school:"),
    ("pages/6_fit-my-gpu.py", "Fit my GPU", ":material/memory_alt:"),
)


def page(tab_title: str) -> None:
    """Every page's start: the browser tab's title, the wide layout, the run history (opened once
    per server) and, at the top of the sidebar, the navigation to every page."""
    st.set_page_config(page_title=tab_title, page_icon=PAGE_ICON, layout="wide")
    st.html(CARD_STYLE)
    history()
    st.query_params.pop("v", None)  # a visitor token of older links: identity is the browser's, not the URL's
    with st.sidebar:
        for path, label, icon in PAGES:
            st.page_link(path, label=label, icon=icon)
        st.divider()


# ----------------------------------------------------------------------------- room mode

@st.cache_resource(show_spinner=False)
def room() -> Room:
    """This server's room settings (`room.room`), read from its environment once."""
    return _room.room()


def page_limits() -> PageLimits:
    """What a page may compute in this server's process (tighter in room mode): `room.page_limits`."""
    return _room.page_limits(room())


# ----------------------------------------------------------------------------- server-wide state

@st.cache_resource(show_spinner=False)
def registry() -> JobRegistry:
    """Every run of this server (all tabs): at most FACTO_MAX_RUNS train at once, the rest queue."""
    return JobRegistry(max_running=max_runs())


@st.cache_resource(show_spinner=False)
def _history(path: str) -> Any:
    from facto.store.history import RunStore

    try:
        return RunStore(path)
    except ValueError as exc:  # StoreUnavailableError: an unusable FACTO_HOME
        return str(exc)


def history():
    """The run history, or None when it is off (the reason is shown by `history_notice`)."""
    from facto.store.history import default_db_path

    store = _history(str(default_db_path()))
    return None if isinstance(store, str) else store


def history_notice() -> None:
    """Say on the page when the history is off or read-only (training still works), and what the
    server's environment got wrong."""
    from facto.store.history import default_db_path

    for problem in env_problems():
        st.error(f"Server setting ignored: {problem}", icon=":material/settings:")

    store = _history(str(default_db_path()))
    if isinstance(store, str):
        st.error(f"Run history is off: {store} Runs still train; they are not stored.",
                 icon=":material/history_toggle_off:")
    elif not getattr(store, "writable", True):
        st.warning(f"The run history at `{store.path}` is read-only: earlier runs can be read, new runs "
                   "are not stored.", icon=":material/lock:")


def writable_history_path() -> str | None:
    """Where a new run stores itself (its process opens the file), or None when the history is
    off or read-only."""
    store = history()
    return str(store.path) if store is not None and getattr(store, "writable", True) else None


class FigureCache:
    """Built figures per (job, name): every tab watching a run shares them. With `max_age_s` a
    figure of an older version is reused while younger than that: however many tabs ask, it is
    rebuilt at most once per `max_age_s` (building is the costly part)."""

    def __init__(self, size: int = 64) -> None:
        self._items: dict[tuple, tuple[Any, float, Any]] = {}  # key -> (version, built at, figure)
        self._lock = threading.Lock()
        self._size = size

    def get(self, job_id: int, name: str, version: Any, build: Callable[[], Any], max_age_s: float = 0.0) -> Any:
        key = (job_id, name)
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and (hit[0] == version or now - hit[1] < max_age_s):
                return hit[2]
        figure = build()
        with self._lock:
            self._items[key] = (version, now, figure)
            if len(self._items) > self._size:
                self._items.pop(next(iter(self._items)))
        return figure


@st.cache_resource(show_spinner=False)
def figures() -> FigureCache:
    return FigureCache()


class RunOwners:
    """Which stored runs each visitor started (server-wide, thread-safe; filled by `submit`)."""

    def __init__(self) -> None:
        self._runs: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def add(self, owner: str, run_id: int) -> None:
        with self._lock:
            runs = self._runs.setdefault(owner, [])
            if run_id not in runs:
                runs.append(run_id)

    def runs(self, owner: str) -> set[int]:
        with self._lock:
            return set(self._runs.get(owner, ()))

    def owner(self, run_id: int) -> str | None:
        with self._lock:
            return next((o for o, runs in self._runs.items() if run_id in runs), None)


@st.cache_resource(show_spinner=False)
def run_owners() -> RunOwners:
    return RunOwners()


def runs_started_by(token: str | None = None) -> set[int]:
    """Ids of the stored runs this visitor (or `token`) started on this server."""
    return run_owners().runs(token or visitor())


def events_of(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """`make_events` running `fn(*args)` in a child process (the default: page redraws can't starve
    training there), or in a thread of this server when FACTO_JOBS=thread."""
    if jobs_mode() == "thread":
        return lambda: fn(*args)
    return in_child(fn, *args)


def submit(make_events: Callable[[], Any], accumulator: Any = None, label: str = "",
           meta: dict | None = None) -> Job:
    """Queue a job of this visitor on the server's registry.

    Every run the job stores (a PhaseEvent or StartEvent with a run id: one run for a comparison,
    one per point of a sweep) is remembered as started by this visitor from its first phase on
    (loading the data), so a run stopped before its first step is still the visitor's.
    """
    owner, owners = visitor(), run_owners()

    def events():
        inner = make_events()
        try:
            for event in inner:
                if isinstance(event, (PhaseEvent, StartEvent)) and event.run_id is not None:
                    owners.add(owner, event.run_id)
                yield event
        finally:
            inner.close()  # Stop: the recorder stores the run in progress as interrupted

    return registry().submit(Job(events, accumulator, label=label, owner=owner, meta=meta))


def watched(state_key: str, param: str) -> Job | None:
    """The job this tab watches (kept in st.session_state[state_key] and in the URL as ?param=N,
    so a reloaded tab reattaches); None when it watches none or the server no longer has it."""
    if st.session_state.get(state_key) is None:
        wanted = ascii_int(st.query_params.get(param) or "")
        if wanted is not None and registry().get(wanted) is not None:
            st.session_state[state_key] = wanted
    job_id = st.session_state.get(state_key)
    job = registry().get(job_id) if job_id is not None else None
    if job is not None and st.query_params.get(param) != str(job_id):
        st.query_params[param] = str(job_id)  # back on the page after a page switch cleared the URL
    return job


def set_watched(state_key: str, param: str, job_id: int | None) -> None:
    st.session_state[state_key] = job_id
    if job_id is None:
        st.query_params.pop(param, None)
    else:
        st.query_params[param] = str(job_id)


def active_jobs_of_visitor() -> list[Job]:
    return [j for j in registry().jobs(active_only=True) if j.owner == visitor()]


def room_job_problems() -> list[str]:
    """In room mode: why this visitor may not start another job now (empty when they may)."""
    r = room()
    mine = active_jobs_of_visitor()
    if r.enabled and len(mine) >= r.runs_per_visitor:
        return [f"you already have {count(len(mine), 'run')} going or waiting; stop one first"]
    return []


@st.cache_data(show_spinner=False)
def model_params(model: str, dataset: str) -> int | None:
    """Parameters of the dense model (None when the model or dataset is unknown)."""
    from facto.engine.build import dense_model
    from facto.engine.data import dataset_info

    try:
        info = dataset_info(dataset)
        return sum(p.numel() for p in dense_model(RunConfig(model=model), info.num_classes,
                                                  info.in_channels).parameters())
    except ValueError:
        return None


def allowed_models() -> list[str]:
    """The models a visitor may pick (room mode: those within the room's parameter limit)."""
    models = SETTINGS["model"].allowed()
    r = room()
    if not r.enabled:
        return models
    return [m for m in models if (model_params(m, "digits") or 0) <= r.max_params]


# ----------------------------------------------------------------------------- visitors

XSRF_COOKIE = "_streamlit_xsrf"  # set by Streamlit's server on a browser's first request


@st.cache_resource(show_spinner=False)
def _server_secret() -> bytes:
    """A random secret of this server process: visitor ids can't be computed from outside."""
    return secrets.token_bytes(32)


def browser_key(cookie: str | None) -> bytes | None:
    """The stable key inside Streamlit's XSRF cookie (None when there is none or it can't be read).
    The cookie is "2|mask|masked key|time" (the masked key changes with every response, the key
    does not) or, in its first version, the key in hex."""
    if not cookie:
        return None
    parts = cookie.split("|")
    try:
        if len(parts) == 4 and parts[0] == "2":
            mask, masked = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
            key = bytes(b ^ mask[i % len(mask)] for i, b in enumerate(masked)) if mask else b""
        elif len(parts) == 1:
            key = bytes.fromhex(parts[0])
        else:
            return None
    except ValueError:
        return None
    return key if len(key) >= 16 else None


def visitor_id(key: bytes, secret: bytes) -> str:
    """The visitor id of a browser key: a keyed hash, so the id (shown to others as "visitor ...")
    does not reveal the key, and only this server can make it."""
    return hmac.new(secret, key, hashlib.sha256).hexdigest()[:12]


def visitor() -> str:
    """This browser's visitor id (the same in every tab); without the browser's cookie, this tab's."""
    key = browser_key(st.context.cookies.get(XSRF_COOKIE))
    if key is not None:
        return visitor_id(key, _server_secret())
    return st.session_state.setdefault("visitor", secrets.token_hex(6))


def identified_by_browser() -> bool:
    """Whether this tab's visitor is its browser (else each tab is its own visitor)."""
    return browser_key(st.context.cookies.get(XSRF_COOKIE)) is not None


def owner_label(job: Job) -> str:
    return "you" if job.owner == visitor() else f"visitor {(job.owner or '?')[:6]}"


def may_stop(job: Job) -> bool:
    """Anyone watching may stop a run, except in room mode, where only its owner may."""
    return not room().enabled or job.owner == visitor()


# ----------------------------------------------------------------------------- widgets from settings

def _plain_error(name: str, value: Any, error: Exception) -> str:
    s = SETTINGS[name]
    return f"{s.label}: {value!r} is not allowed. Use {s.describe_allowed()}."


def field_error(name: str, key: str) -> str | None:
    """The plain-language error of widget `key`'s value now (None when RunConfig field `name` takes it)."""
    try:
        SETTINGS[name].from_widget(name, st.session_state[key])
    except ValueError as exc:
        return _plain_error(name, st.session_state[key], exc)
    return None


def within_room(name: str, key: str) -> None:
    """Lower widget `key`'s value to the room's limit for field `name` where it is above it (a value
    kept from before, or a crafted session): the widget then offers it, and nothing above it runs."""
    limit = _room.field_limit(room(), name)
    value = st.session_state.get(key)
    if limit is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
        st.session_state[key] = limit


def setting_widget(name: str, key: str, container=None, disabled: bool = False,
                   on_change: Callable | None = None, label: str | None = None,
                   options: list | None = None, help_extra: str = "", problem: str | None = None) -> None:
    """The widget for RunConfig field `name` (kind, allowed values, label and help from its Setting).

    Its value lives in st.session_state[key] as the widget's value (`Setting.to_widget`), kept
    for the whole session (a page switch and back finds it as it was). In room mode it offers no
    more than the room allows (`room.field_limit`), saying so in its help. Below it, in plain words,
    what is wrong with its value now (checked on every redraw, so the error goes once the value is
    fixed), or `problem` (what the room's limits or the other settings forbid).
    """
    s: Setting = SETTINGS[name]
    box = container or st
    limit = _room.field_limit(room(), name)
    help_text = s.help + (" " + help_extra if help_extra else "")
    if s.choice_help:
        help_text += " " + " ".join(f"**{k}**: {v}." for k, v in s.choice_help.items())
    if limit is not None:
        help_text += f" This room allows at most {limit:,}."
        within_room(name, key)
    common = dict(key=key, disabled=disabled, help=help_text, on_change=on_change, persist_state="session")
    text = label or s.label
    if s.kind in ("choice", "model", "dataset", "bits", "device"):
        choices = options if options is not None else s.allowed()
        box.selectbox(text, choices, format_func=s.format, **common)
    elif s.kind == "bool":
        box.checkbox(text, **common)
    elif s.kind in ("rank", "text", "init"):
        box.text_input(text, **common)
    elif s.steps:
        values = sorted({*s.steps, st.session_state.get(key, getattr(RunConfig(), name))})
        values = [v for v in values if limit is None or v <= limit]
        box.select_slider(text, values, format_func=lambda v: f"{v:g}", **common)
    elif s.kind == "int":
        minimum = 0 if s.optional else int(s.minimum or 0)
        label_text = text + (" (0 = all)" if s.optional else "")
        box.number_input(label_text, min_value=minimum, max_value=limit, step=1, **common)
    else:
        box.number_input(text, min_value=float(s.minimum or 0), format="%g", **common)
    error = field_error(name, key) or problem
    if error:
        box.error(error, icon=":material/error:")


def init_widgets(prefix: str, names: list[str], values: RunConfig | None = None) -> None:
    """Put each field's widget value in st.session_state (once), from `values` or the defaults."""
    config = values or RunConfig()
    for name in names:
        st.session_state.setdefault(prefix + name, SETTINGS[name].to_widget(getattr(config, name)))


def config_from_widgets(prefix: str, names: list[str], base: RunConfig | None = None) -> RunConfig:
    """The RunConfig the widgets describe (ValueError naming the field when one is bad)."""
    values = (base or RunConfig()).to_dict()
    for name in names:
        values[name] = SETTINGS[name].from_widget(name, st.session_state[prefix + name])
    return RunConfig(**values)


def field_errors(prefix: str, names: list[str]) -> list[str]:
    """Plain-language errors of the widgets, checked now (before Run)."""
    return [error for name in names if (error := field_error(name, prefix + name))]


@dataclass
class FormCheck:
    """What the widgets of a run's form describe, checked on every redraw."""

    config: RunConfig | None  # None while a value is wrong
    problems: dict[str, str]  # RunConfig field -> what is wrong (a bad value, above the room's limit)
    work: RunWork | None  # what the run would do (None while a value is wrong)
    blocked: list[str]  # why this visitor may not start a run now, though the settings are right

    @property
    def ok(self) -> bool:
        return not self.problems and not self.blocked


def check_form(prefix: str, names: list[str], base: RunConfig | None = None) -> FormCheck:
    """The form's RunConfig, every field's problem (its value, the room's limits) and the run's work."""
    for name in names:
        within_room(name, prefix + name)
    problems = {name: error for name in names if (error := field_error(name, prefix + name))}
    config = work = None
    if not problems:
        try:
            config = config_from_widgets(prefix, names, base)
        except ValueError as exc:
            problems[""] = str(exc)
    if config is not None:
        work = run_work(config)
        problems.update(room_problems(room(), config, model_params(config.model, config.dataset), work))
        if "init" in names and "init" not in problems and (problem := init_problem(config)):
            problems["init"] = problem
    return FormCheck(config, problems, work, room_job_problems())


# ----------------------------------------------------------------------------- starting weights

def accuracy_cards(columns: list, inspection, dataset: str) -> None:
    """The test accuracies before training of an inspection (`facto.engine.inspect_weights`), one card
    per column: dense, factorized as is, BatchNorm re-estimated, fitted as a run fits it."""
    acc = inspection.accuracy
    cards = [("dense", "Dense model", f"Test accuracy on {inspection.test_size} test images of {dataset}."),
             ("factorized", "Factorized, before training",
              "The Facto model as factorize builds it, weights and BatchNorm statistics unchanged."),
             ("bn", "With BatchNorm re-estimated",
              f"BatchNorm's running statistics measured again on {inspection.calibration_batches} training "
              "batches; no weight changes."),
             ("refit", "Fitted as a run fits it",
              "What a run from these weights starts Facto with: each layer's last factor refitted by least "
              "squares to the dense layer's outputs on two training batches, then BatchNorm re-estimated "
              "(no labels, no gradient; 'Refit factors to trained weights').")]
    for column, (key, label, help_text) in zip(columns, [c for c in cards if c[0] in acc]):
        delta = None if key == "dense" else f"{acc[key] - acc['dense']:+.1f} points"
        column.metric(label, f"{acc[key]:.1f} %", **CARD, delta=delta, delta_arrow="off", help=help_text)


UPLOADS = "uploads"  # uploaded weights files, in a folder beside the run history


def uploads_folder() -> Path:
    """Where uploaded weights files are kept (beside the run history's database)."""
    from facto.store.history import default_db_path

    return default_db_path().parent / UPLOADS


def upload_limit() -> int | None:
    """The largest weights file a visitor may upload, in bytes (room mode: a float32 state dict of the
    largest model the room allows, plus 1 MB; None: Streamlit's own limit)."""
    r = room()
    return 4 * r.max_params + 2**20 if r.enabled else None


def save_upload(name: str, data: bytes) -> Path:
    """Keep an uploaded weights file under a name made of its content's hash; ValueError when it is
    larger than this server allows."""
    limit = upload_limit()
    if limit is not None and len(data) > limit:
        raise ValueError(f"{name} is {len(data) / 2**20:,.1f} MB: this room takes weights files of at most "
                         f"{limit / 2**20:,.1f} MB")
    from facto.store.files import write_output_file

    folder = uploads_folder()
    folder.mkdir(parents=True, exist_ok=True)
    suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in (".pt", ".pth", ".bin") else ".pt"
    path = folder / (hashlib.sha256(data).hexdigest()[:20] + suffix)
    if not path.exists():
        write_output_file(path, lambda fh: fh.write(data), "the uploaded file", binary=True)
    return path


def _room_init_problem(config: RunConfig) -> str | None:
    """What room mode forbids in `config.init`: another visitor's run, a path on the server (upload the
    file instead), published weights the server would have to download without the room allowing it."""
    r = room()
    if not r.enabled or config.init == "random":
        return None
    if config.init == "pretrained":
        from facto.engine.starting import InitError, pretrained_file

        try:
            present = pretrained_file(config.model)[0].is_file()
        except InitError as exc:
            return str(exc)
        return None if present or r.download else (
            f"torchvision's {config.model} weights are not on this server and this room does not download")
    if config.init_run is not None:
        return None if config.init_run in runs_started_by() else (
            f"run {config.init_run} is not one of your runs: in room mode you start from your own runs or an upload")
    from facto.store.files import inside_folder

    if not inside_folder(Path(config.init).expanduser(), uploads_folder()):
        return "in room mode, upload a weights file instead of naming a path on the server"
    return None


def _init_stamp(config: RunConfig) -> tuple:
    """What a cached check of `config.init` depends on besides its text: the file's size and time."""
    from facto.engine.starting import pretrained_file

    if config.init == "random":
        return ()
    try:
        if config.init == "pretrained":
            path = pretrained_file(config.model)[0]
        elif config.init_run is not None:
            store = history()
            kept = store.kept_models(config.init_run) if store is not None else {}
            path = kept["baseline"].path if "baseline" in kept else None
        else:
            path = Path(config.init).expanduser()
        st_ = path.stat() if path is not None else None
        return (str(path), st_.st_size, st_.st_mtime_ns) if st_ else (str(path),)
    except (OSError, ValueError):
        return ("missing",)


@st.cache_data(show_spinner="Checking the starting weights…", max_entries=32)
def _checked_init(init: str, model: str, dataset: str, history_path: str | None, stamp: tuple) -> str | None:
    from facto.engine.data import dataset_info
    from facto.engine.starting import InitError, check_init

    info = dataset_info(dataset)
    try:
        check_init(RunConfig(model=model, init=init), info.num_classes, info.in_channels, history_path)
    except InitError as exc:
        return str(exc)
    return None


def init_problem(config: RunConfig) -> str | None:
    """Why `config`'s starting weights can't be used here (None: they can): the room's rules, then the
    check a run makes before it starts (cached per file version)."""
    if config.init == "random":
        return None
    problem = _room_init_problem(config)
    if problem:
        return problem
    store = history()
    return _checked_init(config.init, config.model, config.start_dataset, str(store.path) if store is not None else None,
                         _init_stamp(config))


def run_problems(check: FormCheck, shown: list[str]) -> None:
    """Next to Run: why it can't start. A problem of a field in `shown` sits under its widget (named
    here once); the others (fields this form does not show, this visitor's runs) in full."""
    marked = [name for name in check.problems if name in shown]
    if marked:
        labels = ", ".join(SETTINGS[name].label for name in marked)
        st.error(f"Can't run yet: fix {labels} (marked below).", icon=":material/error:")
    for name, problem in check.problems.items():
        if name not in shown:
            st.error(f"Can't run yet: {problem}", icon=":material/error:")
    for problem in check.blocked:
        st.warning(f"Can't run now: {problem}.", icon=":material/hourglass_top:")


@st.cache_data(show_spinner=False, max_entries=32)
def dense_step_seconds(model: str, dataset: str, batch_size: int, device: str) -> float | None:
    """One dense training step timed on this server (None when the device or model can't be used)."""
    from facto.engine.estimate import dense_step_seconds as timed

    try:
        return timed(RunConfig(model=model, dataset=dataset, batch_size=batch_size), device)
    except (ValueError, RuntimeError):
        return None


def run_estimate(check: FormCheck) -> float | None:
    """About how many seconds the form's comparison takes on this server (None when unknown, and in
    room mode: its runs are bounded, and timing a step for every visitor's settings would take the
    cores the room's runs train on)."""
    if check.config is None or check.work is None or not check.work.steps or room().enabled:
        return None
    from facto.engine.estimate import estimate_seconds

    c = check.config
    step = dense_step_seconds(c.model, c.dataset, c.batch_size, c.device)
    return None if step is None else estimate_seconds(check.work, step, c.batch_size)


def duration(seconds: float) -> str:
    """'40 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def work_line(check: FormCheck) -> str | None:
    """One line of what Run will do: steps, tests, about how long (None while the form is wrong)."""
    work = check.work
    if work is None or work.train_images is None:
        return None
    text = (f"{count(work.steps, 'step')} ({work.steps_per_epoch:,} per epoch) on {work.train_images:,} images, "
            f"{count(work.tests, 'test')}")
    seconds = run_estimate(check)
    return text + (f" · about {duration(seconds)}" if seconds is not None else "")


def room_limits_note() -> None:
    """In room mode, next to Run: the room's limits, and a warning when this browser can't be told apart
    from its other tabs."""
    r = room()
    if not r.enabled:
        return
    with st.expander("Room limits", icon=":material/groups:"):
        st.caption(r.describe())
    if not identified_by_browser():
        st.caption(":material/warning: This browser sent no cookie: each of its tabs counts as a visitor.")


def live_view(progress: Callable[[], None], results: Callable[[], None]) -> None:
    """A watched run or sweep while it goes: `progress` redrawn every REFRESH_S, `results` (cards,
    charts, tables) every CHART_REFRESH_S, and neither faded while redrawn (LIVE_VIEW_STYLE: style
    only, it takes no space on the page)."""
    st.html(LIVE_VIEW_STYLE)
    st.fragment(run_every=REFRESH_S)(progress)()
    st.fragment(run_every=CHART_REFRESH_S)(results)()


def anything_to_list(key: str, items: list) -> bool:
    """Whether a list drawn in a polling fragment (the runs of the server, other sweeps) has
    anything to show. The page decides whether the fragment polls; the first time the list comes
    back empty, the whole page is redrawn once, so the polling stops. `key`: one per list."""
    if items:
        st.session_state[key] = True
        return True
    if st.session_state.pop(key, False):
        st.rerun(scope="app")
    return False


def sidebar_footer(limits: bool = True) -> None:
    """The end of every page's sidebar: the room's limits (room mode, unless the page shows them next
    to its Run: `limits=False`) and the run history (where it is stored, outside room mode: a room's
    visitors need not see the server's folders)."""
    r = room()
    with st.sidebar:
        if r.enabled and limits:
            st.info(r.describe(), icon=":material/groups:")
        store = history()
        if store is None:
            st.caption("Run history: off")
        else:
            state = "" if getattr(store, "writable", True) else " (read-only)"
            st.caption(f"Run history{state}" + (": kept on the server" if r.enabled else f": `{store.path}`"))


# ----------------------------------------------------------------------------- factorization report

def factorization_table(rows: list[dict], container: Any = None) -> None:
    """The factorization report (rows of `facto.describe`, as dicts) as a table that fits the page:
    one row per conv/linear layer, a dash where a value does not apply."""
    frame = pd.DataFrame({
        "layer": [r["name"] for r in rows],
        "kept": [r["kind"] for r in rows],
        "weight": ["×".join(map(str, r["weight_shape"])) for r in rows],
        "ranks": [None if r["ranks"] is None else f"{r['ranks'][0]}, {r['ranks'][1]}" for r in rows],
        "params": [f"{r['params_before']:,} → {r['params_after']:,}" for r in rows],
        "trained": [r["trainable_params"] for r in rows],
        "error": [r["rel_error"] for r in rows],
        "note": [r["reason"] or (f"trains {r['update']}" if r["update"] else None) for r in rows],
    })
    (container or st).dataframe(frame, hide_index=True, width="stretch", placeholder="—", column_config={
        "layer": st.column_config.TextColumn(width=150),
        "kept": st.column_config.TextColumn("kind", width=85),
        "weight": st.column_config.TextColumn("shape", width=100, help="Weight shape: out × in × kernel."),
        "ranks": st.column_config.TextColumn("ranks", width=70, help="Channels kept: (out, in)."),
        "params": st.column_config.TextColumn("params", width=140, help="Dense → factorized (all factors)."),
        "trained": st.column_config.NumberColumn("trained", format="localized", width=75,
                                                 help="Parameters of the factor that trains."),
        "error": st.column_config.NumberColumn("error", format="%.3f", width=65,
                                               help="Reconstruction error ‖W − W_factorized‖ / ‖W‖."),
        "note": st.column_config.TextColumn("note")})
