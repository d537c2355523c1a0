"""Facto — train & compare: the dense baseline and Facto side by side, live.

The entry page of a file-based multipage app: `streamlit run app.py` serves this page at / and
every pages/*.py at its file name's URL (/sweep, /fit-my-gpu, ...); `ui.page` draws every page's
sidebar navigation.
Layout only: numbers come from `facto`, figures from `facto.plots`, shared pieces from `ui`.

How a run lives: Run builds a `RunConfig` from the sidebar and submits a `facto.Job` to the
server's `JobRegistry` (runs belong to the server, not to the tab: closing or reloading the
tab loses nothing). The run trains in a child process (`facto.engine.worker`) that records it in the
history and streams its events back; the page watches a job (`?job=N` in the URL, so a
reloaded tab reattaches) and redraws in two fragments: progress every `ui.REFRESH_S`, cards
and charts every `ui.CHART_REFRESH_S` (each figure built at most once per interval for every
tab watching). While the run goes the charts are SVG pictures of their figures, drawn on the
server (cheap for a browser to replace); once it ends, the interactive Plotly charts.
"""
from __future__ import annotations

import math

import streamlit as st

import ui
from facto import plots
from facto.config import PRESET_FIELDS, PRESETS, SCENARIO_FIELDS, RunConfig, matching_preset, preset_text
from facto.engine.estimate import TEST_BATCH_SHARE
from facto.engine.events import RunTracker, StartEvent, steps_done
from facto.engine.jobs import Job
from facto.engine.train import compare_and_record, too_short_note

P = ""  # widget keys are the RunConfig field names on this page
METHOD = ["model", "dataset", "rank", "update", "bits", "recompute"]
TRAINING = ["epochs", "seed", "batch_size", "lr", "device", "init", "warm_start_steps", "warm_start_dataset"]
ADVANCED = ["max_train", "max_test", "block", "eval_every", "optimizer", "schedule", "precision",
            "refit", "keep_models", "data_dir", "download"]
FIELDS = METHOD + TRAINING + ADVANCED


# ----------------------------------------------------------------------------- controls

def apply_preset() -> None:
    """Set the preset's fields; leaving a scenario (transfer) puts its dataset and warm-up back to the
    defaults."""
    name = st.session_state["preset"]
    if name not in PRESETS:
        return
    ref = RunConfig(**PRESETS[name])
    fields = list(PRESET_FIELDS) + [f for f in SCENARIO_FIELDS if f in PRESETS[name]]
    if st.session_state.pop("scenario_applied", None):
        fields += [f for f in SCENARIO_FIELDS if f not in fields]
    for field in fields:
        st.session_state[P + field] = ui.SETTINGS[field].to_widget(getattr(ref, field))
    if any(f in PRESETS[name] for f in SCENARIO_FIELDS):
        st.session_state["scenario_applied"] = name


def match_preset() -> None:
    """After a hand edit of a preset's field: the preset the form matches, else custom."""
    try:
        config = ui.config_from_widgets(P, FIELDS)
    except ValueError:
        try:
            config = ui.config_from_widgets(P, list(PRESET_FIELDS))
        except ValueError:
            st.session_state["preset"] = "custom"
            return
    st.session_state["preset"] = matching_preset(config) or "custom"


MATCHED = (*PRESET_FIELDS, *SCENARIO_FIELDS)  # editing one of these can change the preset the form matches


def init_state() -> None:
    ui.init_widgets(P, FIELDS)
    r = ui.room()
    if r.enabled:  # the host fixes the data folder and downloads
        st.session_state[P + "data_dir"], st.session_state[P + "download"] = r.data_dir, r.download
    st.session_state.setdefault("preset", matching_preset(RunConfig()) or "custom")
    st.session_state.setdefault("history_points", False)


def available_devices() -> list[str]:
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


LONG_RUN_S = 30 * 60  # outside room mode, a run estimated longer than this asks to be confirmed


def start_run(confirmed: bool = False) -> None:
    """Run: start the comparison the sidebar describes, when the form allows it (its problems are
    shown next to Run and under their widgets); a long run first asks to be confirmed."""
    check = ui.check_form(P, FIELDS)
    if not check.ok:
        return
    seconds = ui.run_estimate(check)
    if not confirmed and not ui.room().enabled and seconds is not None and seconds > LONG_RUN_S:
        st.session_state["confirm_long"] = (seconds, check.config.to_dict())
        return
    st.session_state.pop("confirm_long", None)
    config = check.config
    job = ui.submit(ui.events_of(compare_and_record, config.to_dict(), ui.writable_history_path()),
                    RunTracker(), label=config.label(),
                    meta={"config": config.to_dict()})
    watch(job.id)


def watch(job_id: int | None) -> None:
    ui.set_watched("watch", "job", job_id)


def stop_run(job_id: int) -> None:
    job = ui.registry().get(job_id)
    if job is not None and ui.may_stop(job):
        job.stop(wait_s=15.0)  # returns once the worker closed the run (the recorder keeps it)


def sidebar(locked: bool) -> None:
    r = ui.room()
    check = ui.check_form(P, FIELDS)
    problem = check.problems.get
    with st.sidebar:
        left, right = st.columns(2)
        left.button("Run", key="run", type="primary", on_click=start_run, disabled=locked, width="stretch",
                    icon=":material/play_arrow:", help="Train the baseline and Facto side by side.")
        job = watched_job()
        can_stop = job is not None and not job.finished and ui.may_stop(job)
        right.button("Stop", key="stop", on_click=stop_run, args=(job.id if job else 0,), disabled=not can_stop,
                     width="stretch", icon=":material/stop:", help=stop_help(job, can_stop))
        if not locked:
            run_notes(check)
        st.radio("Preset", [*PRESETS, "custom"], key="preset", on_change=apply_preset, disabled=locked,
                 captions=[preset_text(p).split(": ", 1)[1] for p in PRESETS] + ["your own settings"],
                 help="One click sets rank, trained factor, bits and recompute (transfer also sets the data, "
                      "a dense warm-up on the digits 0-4, fine-tuning on 5-9 and its schedule). Editing one of "
                      "them by hand switches to custom.")
        for name in METHOD:
            options = ui.allowed_models() if name == "model" else None
            ui.setting_widget(name, P + name, disabled=locked, options=options, problem=problem(name),
                              on_change=match_preset if name in MATCHED else None)
        a, b = st.columns(2)
        ui.setting_widget("epochs", P + "epochs", a, disabled=locked, problem=problem("epochs"),
                          on_change=match_preset)
        ui.setting_widget("seed", P + "seed", b, disabled=locked)
        ui.setting_widget("batch_size", P + "batch_size", disabled=locked, problem=problem("batch_size"))
        ui.setting_widget("lr", P + "lr", disabled=locked)
        ui.setting_widget("device", P + "device", disabled=locked, options=available_devices())
        starting_weights(locked, problem)
        advanced = [problem(name) for name in ADVANCED]
        with st.expander("Advanced: subset, blocks, testing, data", expanded=any(advanced)):
            a, b = st.columns(2)
            ui.setting_widget("max_train", P + "max_train", a, disabled=locked, label="Train images",
                              problem=problem("max_train"))
            ui.setting_widget("max_test", P + "max_test", b, disabled=locked, label="Test images",
                              problem=problem("max_test"))
            for name in ("block", "eval_every"):
                ui.setting_widget(name, P + name, disabled=locked, problem=problem(name))
            a, b = st.columns(2)
            ui.setting_widget("optimizer", P + "optimizer", a, disabled=locked)
            ui.setting_widget("schedule", P + "schedule", b, disabled=locked, on_change=match_preset)
            ui.setting_widget("precision", P + "precision", disabled=locked)
            ui.setting_widget("refit", P + "refit", disabled=locked)
            ui.setting_widget("keep_models", P + "keep_models", disabled=locked)
            ui.setting_widget("data_dir", P + "data_dir", disabled=locked or r.enabled)
            ui.setting_widget("download", P + "download", disabled=locked or r.enabled)
    ui.sidebar_footer(limits=False)


def starting_weights(locked: bool, problem) -> None:
    """Where the weights start (typed, or an uploaded file) and the dense warm-up before factorizing."""
    ui.setting_widget("init", P + "init", disabled=locked, problem=problem("init"),
                      help_extra="Upload a file below, or type run:ID (History lists the runs that kept models).")
    limit = ui.upload_limit()
    st.file_uploader("Upload a weights file", type=["pt", "pth", "bin"], key="init_upload", disabled=locked,
                     on_change=use_upload, help="A state dict saved with torch.save(model.state_dict(), path)"
                     + (f"; at most {limit / 2**20:,.1f} MB in this room." if limit else "."))
    upload_error = st.session_state.get("init_upload_error")
    if upload_error:
        st.error(upload_error, icon=":material/error:")
    a, b = st.columns(2)
    ui.setting_widget("warm_start_steps", P + "warm_start_steps", a, disabled=locked,
                      problem=problem("warm_start_steps"), on_change=match_preset)
    ui.setting_widget("warm_start_dataset", P + "warm_start_dataset", b, disabled=locked,
                      options=[None, *ui.SETTINGS["warm_start_dataset"].allowed()],
                      problem=problem("warm_start_dataset"), on_change=match_preset)


def use_upload() -> None:
    """An uploaded weights file becomes the run's starting point (its path in Start from)."""
    upload = st.session_state.get("init_upload")
    st.session_state.pop("init_upload_error", None)
    if upload is None:
        return
    try:
        path = ui.save_upload(upload.name, upload.getvalue())
    except (ValueError, OSError) as exc:
        st.session_state["init_upload_error"] = f"Upload refused: {exc}"
        return
    st.session_state[P + "init"] = str(path)


def stop_help(job: Job | None, can_stop: bool) -> str:
    """The Stop button's tooltip: what it does, or why it can't be pressed now."""
    if can_stop:
        return "Stop the run you are watching. What was done is kept (stored as interrupted)."
    if job is None or job.finished:
        return "Nothing to stop: this tab watches no run that is going."
    return "Only the visitor who started this run can stop it (room mode)."


def run_notes(check: ui.FormCheck) -> None:
    """Next to Run: why it can't start, what it will do and about how long, the room's limits, and
    the question a long run asks first."""
    ui.run_problems(check, FIELDS)
    line = ui.work_line(check) if check.ok else None
    if line:
        st.caption(line)
    asked = st.session_state.get("confirm_long")
    if asked is not None and check.config is not None and asked[1] == check.config.to_dict():
        seconds = asked[0]
        st.warning(f"This run takes about {ui.duration(seconds)} on this machine.", icon=":material/schedule:")
        yes, no = st.columns(2)
        yes.button("Start anyway", key="confirm_run", on_click=start_run, args=(True,), width="stretch")
        no.button("Cancel", key="cancel_run", on_click=lambda: st.session_state.pop("confirm_long", None),
                  width="stretch")
    ui.room_limits_note()


@st.cache_data(show_spinner=False)
def layer_types(model: str, dataset: str) -> dict[str, str]:
    from facto.engine.build import dense_model, facto_model
    from facto.engine.data import dataset_info

    info = dataset_info(dataset)
    config = RunConfig(model=model)
    dense = dense_model(config, info.num_classes, info.in_channels)
    types = {name: type(m).__name__ for name, m in dense.named_modules() if name}
    types.update({name: type(m).__name__ for name, m in facto_model(config, dense).named_modules()
                  if name and name not in types})
    return types


@st.cache_data(show_spinner=False, max_entries=16)
def data_sizes(dataset: str, data_dir: str, max_train: int, max_test: int) -> tuple[int, int] | str:
    """(train, test) image counts, or the reason the data can't be read."""
    from facto.engine.data import load_data

    try:
        bundle = load_data(dataset, data_dir, batch_size=1, max_train=max_train or None, max_test=max_test or None)
    except ValueError as exc:
        return str(exc)
    return bundle.train_size, bundle.test_size


def describe_device(choice: str) -> str:
    from facto.engine.devices import device_name, resolve_device

    try:
        return device_name(resolve_device(choice))
    except ValueError as exc:
        return str(exc)


def header(view: dict | None) -> None:
    s = st.session_state
    if view is not None and view.get("device"):
        cfg, params = view["config"], view["params"]
        device = view["device"]
        size = f"{view['train_size']:,} train / {view['test_size']:,} test images"
        model = (f"{cfg['model']}: {params.get('baseline', 0):,} params dense → {params.get('facto', 0):,} "
                 f"factorized ({view['trainable'].get('facto', 0):,} trained)")
        dataset = cfg["dataset"]
    else:
        device = describe_device(s.get(P + "device", "auto"))
        dataset = s.get(P + "dataset", RunConfig().dataset)
        n = ui.model_params(s.get(P + "model", RunConfig().model), dataset)
        model = f"{s.get(P + 'model')}: {n:,} params" if n else str(s.get(P + "model"))
        sizes = data_sizes(dataset, str(s.get(P + "data_dir", "")).strip(), int(s.get(P + "max_train") or 0),
                           int(s.get(P + "max_test") or 0))
        size = f"{sizes[0]:,} train / {sizes[1]:,} test images" if isinstance(sizes, tuple) else "not on disk"
    st.markdown(f":material/developer_board: **Device** {device} &nbsp;·&nbsp; :material/neurology: **Model** "
                f"{model} &nbsp;·&nbsp; :material/photo_library: **Data** {dataset}, {size}")
    for line in (view or {}).get("starts") or []:  # where the weights came from, and what was loaded
        st.caption(":material/history: " + line[0].upper() + line[1:] + ".")


# ----------------------------------------------------------------------------- what is shown

def watched_job() -> Job | None:
    """The comparison this tab watches (?job=N in the URL: a reloaded tab reattaches to it)."""
    job = ui.watched("watch", "job")
    return job if job is not None and job.meta.get("kind") != "sweep" else None


def job_view(job: Job) -> dict:
    """What the panel draws for a job, in the same shape as `stored_view`."""
    def read(tracker: RunTracker) -> dict:
        start: StartEvent | None = tracker.start
        steps = [s for v in tracker.steps.values() for s in v]
        steps.sort(key=lambda s: (s.step, s.variant != "baseline"))
        evals = [e for v in tracker.evals.values() for e in v]
        summary = tracker.summary(job.status if job.finished else "running") if tracker.steps else None
        return dict(steps=steps, evals=evals, summary=summary.__dict__ if summary else None, start=start,
                    failures=dict(tracker.failures))

    data = job.read(read)
    start = data["start"]
    final = stored_summary(start.run_id) if job.finished and start is not None else None
    if final is not None:  # what the run's own process stored: the same numbers History shows
        data["summary"] = final
    return dict(
        source="job", job_id=job.id, version=job.version, status=job.status, config=job.meta.get("config", {}),
        run_id=start.run_id if start else None, steps=data["steps"], evals=data["evals"],
        summary=data["summary"], error=job.error, stopping=job.stopping, failures=data["failures"],
        layer_bytes=start.layer_bytes if start else {}, report=start.report if start else [],
        total_steps=start.total_steps if start else None, steps_per_epoch=start.steps_per_epoch if start else None,
        evals_planned=start.evals_planned if start else 0, device=start.device_name if start else None,
        params=start.params if start else {}, trainable=start.trainable_params if start else {},
        train_size=start.train_size if start else None, test_size=start.test_size if start else None,
        queue_position=ui.registry().queue_position(job), owner=ui.owner_label(job),
        starts=[r["line"] for r in ((start.init, start.handover, start.calibration) if start else ())
                if r and (r.get("loaded") or r.get("refitted"))])


def stored_summary(run_id: int | None) -> dict | None:
    """The summary a finished run stored (None when it was not stored or can't be read)."""
    store = ui.history()
    if store is None or run_id is None:
        return None
    try:
        return store.get_run(run_id).summary
    except (ValueError, OSError):
        return None


def stored_view(run) -> dict:
    store = ui.history()
    return dict(
        source="history", job_id=None, version=0, status=run.status, config=run.config, run_id=run.id,
        steps=store.metrics(run.id, kind="step"), evals=store.metrics(run.id, kind="eval"), summary=run.summary,
        error=run.error, stopping=False, failures=(run.summary or {}).get("failures") or {},
        layer_bytes=store.layer_bytes(run.id), report=[], total_steps=None, steps_per_epoch=None,
        evals_planned=0, device=None, params=(run.summary or {}).get("params", {}), trainable={},
        train_size=None, test_size=None, queue_position=None, owner=None,
        starts=[f"started from {run.config['init']}"] if run.config.get("init", "random") != "random" else [])


def latest_stored_view() -> dict | None:
    """The latest finished comparison from the history that trained at least one step (results
    survive a server restart), or the run the URL names (?run=N)."""
    store = ui.history()
    if store is None:
        return None
    wanted = st.query_params.get("run")
    for run in store.list_runs(kind="compare", limit=20):
        if wanted and str(run.id) != wanted:
            continue
        trained = any(((run.summary or {}).get("steps") or {}).values())
        if run.status in ("completed", "interrupted") and (trained or wanted):
            return stored_view(run)
    return None


# ----------------------------------------------------------------------------- the panel

def _mb(value) -> str:
    return "—" if value is None else f"{value / plots.MB:,.2f} MB"


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1f} %"


def time_left(view: dict, done: int) -> float | None:
    """Seconds left: the remaining steps at the recent pace, plus the tests still to come."""
    steps, total = view["steps"], view["total_steps"]
    recent = [s for s in steps if s.step > max(done - 10, 1)] or steps
    per_step = sum(s.step_seconds for s in recent) / max(len({s.step for s in recent}), 1)
    if not per_step:
        return None
    evals = view["evals"]
    done_evals = len({e.step for e in evals})
    if evals:
        per_eval = sum(e.seconds for e in evals) / done_evals
    else:  # a test is a forward pass over the test set: a share of a training step per batch
        batches = math.ceil((view["test_size"] or 0) / max(view["config"].get("batch_size", 64), 1))
        per_eval = batches * per_step * TEST_BATCH_SHARE
    return per_step * (total - done) + per_eval * max(view["evals_planned"] - done_evals, 0)


def progress(view: dict) -> None:
    if view["status"] == "queued":
        st.info(f"Waiting for a free slot: position {view['queue_position']} in the queue (runs on this server "
                "train one at a time, so each runs at full speed).", icon=":material/hourglass_top:")
        return
    if view["status"] != "running":
        return
    total = view["total_steps"]
    if total is None:
        st.progress(0.0, text="Loading data, building and factorizing the model… (the first step follows)")
        return
    done = max((s.step for s in view["steps"] if s.variant != "warmup"), default=0)
    epochs = math.ceil(total / view["steps_per_epoch"])
    epoch = max((s.epoch for s in view["steps"]), default=1)
    text = f"Step {done} of {total} · epoch {epoch} of {epochs}"
    left = time_left(view, done) if done else None
    if left is not None:
        text += f" · about {ui.duration(left)} left, tests included"
    if view.get("stopping"):
        text = f"Stopping after step {done} of {total}: the current step finishes first…"
    st.progress(min(done / total, 1.0), text=text)


def status_line(view: dict) -> None:
    status, summary, run = view["status"], view["summary"] or {}, view["run_id"]
    stored = f" Stored as run #{run}." if run is not None else " Not stored (history off)."
    for variant, reason in (view.get("failures") or {}).items():
        st.error(f"{variant.capitalize()} stopped: {reason}.", icon=":material/error:")
    if status == "completed":
        saving, delta = summary.get("saving_pct"), summary.get("accuracy_delta")
        text = "Done."
        if saving is not None:
            text = f"Done: Facto stored {saving:.1f} % less for backward"
            text += f", test accuracy {delta:+.2f} points vs the baseline." if delta is not None else "."
        st.success(text + stored, icon=":material/check_circle:")
    elif status == "interrupted":
        done = steps_done(summary.get("steps") or {}, summary.get("failures"))
        total = f" of {view['total_steps']}" if view["total_steps"] else ""
        st.warning(f"Stopped after {done}{total} {'step' if done == 1 else 'steps'}; what was done is kept.{stored}",
                   icon=":material/pause_circle:")
    elif status == "failed":
        st.error(f"The run could not go on: {view['error'] or 'see the reasons above'}", icon=":material/error:")
    if status in ("completed", "interrupted"):
        note = too_short_note((summary.get("accuracy") or {}).get("baseline"), (view["config"] or {}).get("max_steps"))
        if note:
            st.warning(note, icon=":material/warning:")


def tested_when(summary: dict) -> str | None:
    """Which test point the accuracy cards show ('after epoch 2', 'after step 30 (epoch 2)'), None
    before both variants have one. Stored runs from before `tested_step` was kept say 'at the end'."""
    step, epoch = summary.get("tested_step"), summary.get("tested_epoch")
    if step is None:
        return "at the end" if (summary.get("accuracy") or {}).get("facto") is not None else None
    ends_epoch = summary.get("steps_per_epoch") and step % summary["steps_per_epoch"] == 0
    return f"after epoch {epoch}" if ends_epoch or not epoch else f"after step {step} (epoch {epoch})"


def cards(view: dict) -> None:
    summary = dict(view["summary"] or {}, steps_per_epoch=view.get("steps_per_epoch"))
    act = summary.get("act_bytes") or {}
    base_b, facto_b = act.get("baseline"), act.get("facto")
    when = tested_when(summary)
    acc = (summary.get("accuracy") or {}) if when else {}
    acc_delta = summary.get("accuracy_delta") if when else None
    peak, what = summary.get("peak_cuda") or {}, "CUDA"
    if not any(v is not None for v in peak.values()):  # on a CPU: what the machine gave the process
        peak, what = summary.get("process_peak") or {}, "process"
    show_peak = any(v is not None for v in peak.values())
    memory, accuracy = st.columns(4 if show_peak else 3), st.columns(4 if show_peak else 3)
    memory[0].metric("Baseline activations", _mb(base_b), **ui.CARD,
                     help="Bytes autograd keeps for backward after one forward pass of a batch (dense fp32).")
    memory[1].metric("Facto activations", _mb(facto_b), **ui.CARD,
                     delta=None if base_b is None or facto_b is None else f"{(facto_b - base_b) / plots.MB:+,.2f} MB",
                     delta_color="inverse",
                     help="The same for Facto: one factor's input per layer, compressed, plus 1-bit ReLU masks.")
    memory[2].metric("Memory saving", _pct(summary.get("saving_pct")), **ui.CARD,
                     delta=f"{base_b / facto_b:.1f}× less stored" if base_b and facto_b else None,
                     delta_arrow="off", help="1 − Facto / baseline activation bytes.")
    waiting = "Shown once both variants have been tested (after the first epoch)."
    test = f"Test accuracy {when}" if when else "Test accuracy"
    accuracy[0].metric("Baseline accuracy", _pct(acc.get("baseline")), **ui.CARD,
                       help=f"{test} (the live curve on the left is training accuracy). " + ("" if when else waiting))
    flat = acc_delta is not None and round(acc_delta, 2) == 0
    accuracy[1].metric("Facto accuracy", _pct(acc.get("facto")), **ui.CARD,
                       delta=None if acc_delta is None else f"{acc_delta:+.2f} points",
                       delta_color="off" if flat else "normal", delta_arrow="off" if flat else "auto",
                       help=f"{test}, at the same test point as the baseline's; the delta is against the "
                            "baseline. " + ("" if when else waiting))
    accuracy[2].metric(f"Change {when}" if when else "Accuracy change",
                       "—" if acc_delta is None else f"{acc_delta:+.2f} points", **ui.CARD,
                       help="Facto minus baseline test accuracy, in percentage points, both tested after the "
                            "same training. " + ("" if when else waiting))
    if show_peak:
        pb, pf = peak.get("baseline"), peak.get("facto")
        reserved = (summary.get("peak_reserved") or {}).get("facto")
        how = ("torch.cuda.max_memory_allocated during a Facto step; the delta is against the baseline's peak. "
               "This is what the GPU must hold" + (f"; the caching allocator reserved up to {_mb(reserved)} from "
                                                   "the driver (freed blocks it keeps for reuse)." if reserved
                                                   else ".") if what == "CUDA" else
               "The process's resident memory at its most during a Facto step (Linux VmHWM): weights, optimizer "
               "state, the interpreter and the step's buffers; the delta is against the baseline's. This is "
               "what the machine gave the training process. Both variants train in one process, and glibc keeps "
               "what one step freed for the next: the two read alike unless the app was started with "
               "FACTO_RETURN_MEMORY=1.")
        memory[3].metric(f"Peak {what} memory (Facto)", _mb(pf), **ui.CARD, delta_color="inverse",
                         delta=None if pb is None or pf is None else f"{(pf - pb) / plots.MB:+,.1f} MB", help=how)
        accuracy[3].metric(f"Peak {what} memory (baseline)", _mb(pb), **ui.CARD)


def tradeoff_points() -> list[dict]:
    points = list(st.session_state.get("session_points", []))
    store = ui.history()
    if st.session_state.get("history_points") and store is not None:
        seen = {p.get("id") for p in points}
        points += [p for p in plots.tradeoff_points(store.list_runs(kind="compare")) if p["id"] not in seen]
    return points


def remember(view: dict) -> None:
    """Add a finished run to this tab's points of the saving-vs-accuracy chart (once)."""
    summary = view["summary"] or {}
    key = ("job", view["job_id"]) if view["job_id"] else ("run", view["run_id"])
    seen = st.session_state.setdefault("remembered", set())
    if view["status"] in ("running", "queued") or key in seen:
        return
    seen.add(key)
    if summary.get("saving_pct") is None or summary.get("accuracy_delta") is None:
        return  # stopped before the first test: no accuracy to plot
    acc = summary.get("accuracy") or {}
    st.session_state.setdefault("session_points", []).append(dict(
        saving_pct=summary["saving_pct"], accuracy_delta=summary["accuracy_delta"], id=view["run_id"],
        source="session", label=(f"run #{view['run_id']} ({view['status']})<br>{plots.config_label(view['config'])}"
                                 f"<br>test: baseline {acc.get('baseline', 0):.1f} % → Facto "
                                 f"{acc.get('facto', 0):.1f} %")))


def _field(row, name: str):
    """A value of a step: an event (live run) or a dict (stored run)."""
    return row.get(name) if isinstance(row, dict) else getattr(row, name, None)


def charts(view: dict) -> None:
    """The run's four charts, and a fifth of what the machine holds (the GPU's allocator on CUDA, the
    process's resident peak on a CPU under Linux). While it goes they are images drawn on the server
    (`plots.figure_svg`), rebuilt at most once per CHART_REFRESH_S for every tab; when it ends,
    the interactive Plotly charts of the same figures."""
    cache, job_id, version = ui.figures(), view["job_id"] or -(view["run_id"] or 0), view["version"]
    live = view["status"] in ("running", "queued")
    age = ui.CHART_REFRESH_S if live else 0.0  # the last redraw: every step
    cfg = view["config"]
    empty = plots.WAITING if live else "This run stored no training step."

    def draw(container, name: str, revision, build, width: int = ui.LIVE_CHART_WIDTH) -> None:
        """One chart, built by `build` at most once per `revision` (and per CHART_REFRESH_S while live)."""
        if live:  # a picture is cheap for the browser to replace; a Plotly chart is rebuilt from scratch
            picture = cache.get(job_id, f"{name}/svg", revision, lambda: plots.figure_svg(build(), width), age)
            container.image(picture, width="stretch")
        else:
            container.plotly_chart(cache.get(job_id, name, revision, build, age), key=f"chart_{name.split('-')[0]}",
                                   **ui.CHART)

    left, right = st.columns(2)
    draw(left, "accuracy", version, lambda: plots.accuracy_curves(view["steps"], view["evals"], empty_text=empty))
    draw(right, "memory", version, lambda: plots.memory_curves(view["steps"], empty_text=empty))
    if any(_field(s, "peak_cuda") is not None for s in view["steps"]):  # trained on CUDA
        draw(st, "cuda", version, lambda: plots.cuda_memory_curves(view["steps"]), 2 * ui.LIVE_CHART_WIDTH)
    elif any(_field(s, "process_peak") is not None for s in view["steps"]):  # on a CPU: what the process got
        draw(st, "process", version, lambda: plots.process_memory_curves(view["steps"]), 2 * ui.LIVE_CHART_WIDTH)
    left, right = st.columns(2)
    types = layer_types(cfg.get("model", RunConfig().model), cfg.get("dataset", RunConfig().dataset))
    draw(left, "layers", 1 if view["layer_bytes"] else 0, lambda: plots.layer_bytes_bars(view["layer_bytes"], types))
    with right:
        point = plots.live_point(view["steps"], view["evals"], cfg) if view["status"] == "running" else None
        points = tradeoff_points()
        draw(right, f"tradeoff-{ui.visitor()}", (version, tuple(p.get("id") for p in points)),
             lambda: plots.tradeoff_scatter(points, point))
        st.checkbox("Show earlier runs from the history", key="history_points",
                    help="Adds every stored comparison (grey) to the chart.")
    if view["report"]:
        # Drawn only while open: a table costs the browser more than a chart redraw, every redraw.
        report = st.expander("Factorization report: which layers were factorized, ranks, errors",
                             key="report_open", on_change="rerun")
        if report.open:
            ui.factorization_table(view["report"], report)


def server_runs(watching: int | None = None) -> None:
    """Every run of this server in progress or waiting, with who started it and how far it is;
    watch any of them. Not drawn when the only one is the run this tab watches (`watching`: its
    progress is right below). Drawn inside a fragment that redraws while runs go, so its buttons
    ask for a whole-page redraw themselves."""
    jobs = ui.registry().jobs(active_only=True)
    if [j.id for j in jobs] == [watching] or not ui.anything_to_list("listed_server_runs", jobs):
        return
    with st.container(border=True):
        st.markdown(f"**Runs on this server** ({len(jobs)} going or waiting)")
        for job in jobs:
            position = ui.registry().queue_position(job)
            done = job.read(lambda t: max((s.step for v in t.steps.values() for s in v), default=0))
            total = job.read(lambda t: t.start.total_steps if t.start else None)
            state = (f"waiting, position {position}" if position else
                     f"step {done} of {total}" if total else "starting")
            a, b = st.columns([5, 1])
            sweep = job.meta.get("kind") == "sweep"
            a.markdown(f"#{job.id} · {'sweep · ' if sweep else ''}{job.label} · started by {ui.owner_label(job)}"
                       f" · {state}")
            if sweep:  # a sweep is watched on its own page
                if b.button("Open", key=f"watch_{job.id}", width="stretch", help="Watch this sweep on the Sweep page"):
                    ui.set_watched("sweep_watch", "sweep", job.id)
                    st.switch_page("pages/1_sweep.py")
                continue
            watching = st.session_state.get("watch") == job.id
            if b.button("Watching" if watching else "Watch", key=f"watch_{job.id}", disabled=watching,
                        width="stretch"):
                watch(job.id)
                st.rerun(scope="app")


def live_progress() -> None:
    """The server's runs, progress and status (redrawn every REFRESH_S while the watched run goes:
    a small redraw)."""
    job = watched_job()
    server_runs(job.id if job is not None else None)
    view = job_view(job) if job is not None else None
    if job is not None and job.finished and st.session_state.get("drawn_running"):
        st.rerun(scope="app")  # the run ended: redraw the whole page (controls unlocked, polling off)
    if view is not None:
        watched_progress(view)


def watched_progress(view: dict) -> None:
    """Whose run this is (when not this visitor's), its progress and its status line."""
    if view["owner"] != "you":
        st.caption(f"Watching run #{view['job_id']}, started by {view['owner']}.")
    progress(view)
    status_line(view)


def live_charts() -> None:
    """Cards and charts (redrawn every CHART_REFRESH_S while the watched run goes, from figures built
    once for every tab): what costs the server and the browser most is redrawn least often."""
    job = watched_job()
    if job is None:
        return
    view = job_view(job)
    if view["steps"]:
        cards(view)
        remember(view)
    charts(view)  # pictures while it goes (no chart library to load), interactive charts once it ends


def stored_panel(view: dict) -> None:
    st.info(f"Showing the last stored run #{view['run_id']} ({plots.config_label(view['config'])}). "
            "Press **Run** to start a new one.", icon=":material/history:")
    status_line(view)
    cards(view)
    remember(view)
    charts(view)


def intro() -> None:
    st.info("Choose the settings on the left and press **Run**: the dense baseline (blue) and Facto (orange) train "
            "side by side from the same weights on the same batches.", icon=":material/play_circle:")
    st.markdown(
        "**What Facto does.** Each conv layer's weight is split into three small factors (a 1×1 conv that "
        "shrinks the channels to the *rank*, a k×k *core* conv, a 1×1 conv back to full width). Only one factor "
        "trains, so only *its* input must be kept for backward: far fewer channels. What is kept is compressed "
        "to a few bits per value, ReLUs keep 1-bit masks, and BatchNorm inputs are recomputed instead of "
        "stored. The **How it works** page shows it inside one layer.")


# ----------------------------------------------------------------------------- page

def train_and_compare() -> None:
    """The main page: sidebar controls, header line, the runs of the server, the watched run."""
    init_state()
    job = watched_job()
    running = job is not None and not job.finished
    st.session_state["controls_locked"] = running and job.owner == ui.visitor()
    st.session_state["drawn_running"] = running
    st.title("Facto · train & compare")
    st.caption("Facto factorizes each conv layer, trains one factor and stores fewer, smaller feature maps "
               "for backward. Baseline: dense fp32 (blue). Facto: orange.")
    ui.history_notice()
    sidebar(st.session_state["controls_locked"])
    view = job_view(job) if job is not None else None
    header(view)
    if running:
        ui.live_view(live_progress, live_charts)
        return
    # Other visitors' runs, kept current while any goes
    st.fragment(run_every=ui.REFRESH_S if ui.registry().jobs(active_only=True) else None)(server_runs)()
    if job is None:
        stored = latest_stored_view()
        if stored is None:
            intro()
        else:
            stored_panel(stored)
        return
    watched_progress(view)  # a run this tab watched, now finished
    live_charts()


ui.page("Facto")
train_and_compare()
