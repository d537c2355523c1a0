"""Sweep: short runs over ranks x bits x update modes; the Pareto front of saving vs accuracy.

Layout only: `facto.engine.sweep.sweep` trains the baseline once, then one Facto run per setting
(each run stored); `facto.engine.sweep.SweepTracker` folds its events; figures from facto.plots.
A sweep is a `facto.engine.jobs.Job` of the server's registry, like a comparison on the main page:
it belongs to the server, not to the tab (`?sweep=N` reattaches a reloaded tab), and Stop
keeps the finished points (the run in progress is stored as interrupted).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

import ui
from facto import plots
from facto.config import SETTINGS, RunConfig
from facto.engine.jobs import Job
from facto.engine.sweep import SweepTracker, points_table, sweep_and_record, sweep_configs

ui.page("Facto · sweep")

P = "sweep_"
BASE = ["model", "dataset", "epochs", "batch_size", "seed", "recompute", "max_train", "data_dir"]
DEFAULTS = RunConfig()
RANK_SUGGESTIONS = ["0.125", "0.25", "0.5", "0.75", "1.0", "energy:0.9"]
GRID_DEFAULTS = {"ranks": ["0.25", str(DEFAULTS.rank)], "bits": [2, DEFAULTS.bits], "updates": [DEFAULTS.update]}
WATCH, PARAM = "sweep_watch", "sweep"


# ----------------------------------------------------------------------------- controls

def init_state() -> None:
    ui.init_widgets(P, BASE)
    r = ui.room()
    if r.enabled:  # the host fixes the data folder
        st.session_state[P + "data_dir"] = r.data_dir
    for name, values in GRID_DEFAULTS.items():
        st.session_state.setdefault(P + name, list(values))


def rank_errors() -> list[str]:
    """Each chosen or typed rank, checked by the rank setting (plain words)."""
    errors = []
    for text in st.session_state.get(P + "ranks", []):
        try:
            SETTINGS["rank"].from_widget("rank", text)
        except ValueError:
            errors.append(f"Rank {text!r} is not allowed. Use {SETTINGS['rank'].describe_allowed()}.")
    return errors


def empty_choices() -> dict[str, str]:
    """Grid lists left empty: widget key suffix -> what to choose."""
    s = st.session_state
    return {name: f"Choose at least {what}." for name, what in
            (("ranks", "one rank"), ("bits", "one bits value"), ("updates", "one trained factor")) if not s.get(P + name)}


def grid() -> tuple[list, list, list]:
    s = st.session_state
    ranks = [SETTINGS["rank"].from_widget("rank", text) for text in s[P + "ranks"]]
    return ranks, list(s[P + "bits"]), list(s[P + "updates"])


def check_sweep() -> tuple[ui.FormCheck, list | None]:
    """The base settings' check (fields, the room's limits) with the grid's problems added (under
    "" when no widget shows them), and the sweep's runs (None while something is wrong)."""
    check = ui.check_form(P, BASE)
    if rank_errors() or empty_choices() or check.config is None:
        return check, None
    ranks, bits, updates = grid()
    try:
        configs = sweep_configs(check.config, ranks, bits, updates)  # every point validated before anything trains
    except ValueError as exc:
        check.problems[""] = str(exc)
        return check, None
    r = ui.room()
    if r.enabled and len(configs) > r.max_sweep:
        check.problems[""] = (f"{ui.count(len(configs), 'setting')} is above this room's limit of "
                              f"{r.max_sweep} per sweep: choose fewer ranks, bits or trained factors.")
        return check, None
    return check, configs


def start_sweep() -> None:
    check, configs = check_sweep()
    if configs is None or not check.ok:
        return
    base = check.config
    ranks, bits, updates = grid()
    job = ui.submit(ui.events_of(sweep_and_record, base.to_dict(), ranks, bits, updates,
                                 ui.writable_history_path()), SweepTracker(),
                    label=f"sweep of {len(configs)} settings · {base.model} on {base.dataset}",
                    meta={"config": base.to_dict(), "kind": "sweep"})
    ui.set_watched(WATCH, PARAM, job.id)


def stop_sweep(job_id: int) -> None:
    job = ui.registry().get(job_id)
    if job is not None and ui.may_stop(job):
        job.stop(wait_s=15.0)  # returns once the worker closed the run in progress (stored as interrupted)


def watched_sweep() -> Job | None:
    job = ui.watched(WATCH, PARAM)
    return job if job is not None and job.meta.get("kind") == "sweep" else None


def sidebar(locked: bool, job: Job | None) -> None:
    r = ui.room()
    check, configs = check_sweep()
    problem = check.problems.get
    with st.sidebar:
        left, right = st.columns(2)
        left.button("Run", key="sweep_run", type="primary", on_click=start_sweep, disabled=locked,
                    icon=":material/play_arrow:", width="stretch",
                    help="Train the baseline once, then one Facto run per setting of the grid.")
        can_stop = job is not None and not job.finished and ui.may_stop(job)
        right.button("Stop", key="sweep_stop", on_click=stop_sweep, args=(job.id if job else 0,),
                     disabled=not can_stop, icon=":material/stop:", width="stretch",
                     help="Stop now: the finished points are kept, the run in progress is stored as interrupted."
                     if can_stop else "Nothing to stop: this tab watches no sweep that is going." if
                     job is None or job.finished else "Only the visitor who started this sweep can stop it (room mode).")
        if not locked:
            ui.run_problems(check, BASE)
            if rank_errors() or empty_choices():
                st.error("Can't run yet: fix the grid (marked below).", icon=":material/error:")
            if configs is not None and check.ok and check.work is not None:
                st.caption(f"{ui.count(len(configs) + 1, 'run')} of {ui.count(check.work.steps, 'step')} each")
            ui.room_limits_note()
        empty = empty_choices()
        st.multiselect("Ranks", sorted(set(RANK_SUGGESTIONS) | set(st.session_state[P + "ranks"]), key=_rank_key),
                       key=P + "ranks", accept_new_options=True, disabled=locked, persist_state="session",
                       help=SETTINGS["rank"].help + " Pick some or type your own (Enter adds it).")
        for error in rank_errors() + [empty[k] for k in ("ranks",) if k in empty]:
            st.error(error, icon=":material/error:")
        st.multiselect("Bits per stored value", SETTINGS["bits"].allowed(), key=P + "bits",
                       format_func=SETTINGS["bits"].format, disabled=locked, persist_state="session",
                       help=SETTINGS["bits"].help)
        if "bits" in empty:
            st.error(empty["bits"], icon=":material/error:")
        st.multiselect("Trained factor", SETTINGS["update"].allowed(), key=P + "updates", disabled=locked,
                       persist_state="session", help=SETTINGS["update"].help + " " + " ".join(
                           f"**{k}**: {v}." for k, v in (SETTINGS["update"].choice_help or {}).items()))
        if "updates" in empty:
            st.error(empty["updates"], icon=":material/error:")
        st.divider()
        st.caption("Every run of the sweep (the baseline too) uses these settings:")
        ui.setting_widget("model", P + "model", disabled=locked, options=ui.allowed_models(), problem=problem("model"))
        ui.setting_widget("dataset", P + "dataset", disabled=locked)
        a, b = st.columns(2)
        ui.setting_widget("epochs", P + "epochs", a, disabled=locked, label="Epochs per run", problem=problem("epochs"))
        ui.setting_widget("seed", P + "seed", b, disabled=locked)
        ui.setting_widget("batch_size", P + "batch_size", disabled=locked, problem=problem("batch_size"))
        ui.setting_widget("max_train", P + "max_train", disabled=locked, problem=problem("max_train"))
        ui.setting_widget("recompute", P + "recompute", disabled=locked)
        ui.setting_widget("data_dir", P + "data_dir", disabled=locked or r.enabled)
    ui.sidebar_footer(limits=False)


def _rank_key(text: str):
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


# ----------------------------------------------------------------------------- what is shown

def sweep_state(job: Job) -> dict:
    def read(t: SweepTracker) -> dict:
        return dict(points=list(t.points), total=t.total, fraction=t.fraction(), current=t.describe_current(),
                    step=t.step, run_steps=t.run_steps, too_short=t.too_short(), run_ids=list(t.run_ids))

    return job.read(read)


def progress(job: Job, state: dict) -> None:
    done, total = len(state["points"]), state["total"]
    if job.status == "queued":
        st.info(f"Waiting for a free slot: position {ui.registry().queue_position(job)} in the queue (runs on "
                "this server train one at a time).", icon=":material/hourglass_top:")
    elif job.status == "running":
        if total is None:
            text = "Checking the grid…"
        elif not state["current"]:
            text = f"Run {done + 1} of {total}: loading data, building and factorizing the model…"
        else:
            text = f"Run {done + 1} of {total}: {state['current']} · step {state['step']} of {state['run_steps']}"
        if job.stopping:
            text = f"Stopping: run {done + 1} of {total} finishes its current step first…"
        st.progress(state["fraction"], text=text)
    elif job.status == "completed":
        stored = " Every run is stored in the history." if state["run_ids"] else " Not stored (history off)."
        st.success(f"Sweep done: {ui.count(done, 'run')} (the baseline and {ui.count(done - 1, 'Facto setting')}).{stored}",
                   icon=":material/check_circle:")
    elif job.status == "interrupted":
        st.warning(f"Stopped after {done} of {ui.count(total, 'run')}; the finished points are kept.",
                   icon=":material/pause_circle:")
    else:
        st.error(f"The sweep could not go on: {job.error}", icon=":material/error:")
    if state["too_short"]:
        st.warning(state["too_short"], icon=":material/warning:")


def points_frame(points: list) -> pd.DataFrame:
    rows = points_table(points)
    bits = SETTINGS["bits"]
    return pd.DataFrame({
        "run": ["baseline (dense fp32)" if r["variant"] == "baseline" else "Facto" for r in rows],
        "rank": [None if r["variant"] == "baseline" else r["rank"] for r in rows],
        "bits": [None if r["variant"] == "baseline" else bits.format(r["bits"]) for r in rows],
        "trained factor": [None if r["variant"] == "baseline" else r["update"] for r in rows],
        "test accuracy": [r["accuracy"] for r in rows],
        "change": [r["accuracy_delta"] if r["variant"] != "baseline" else None for r in rows],
        "memory saving": [r["saving_pct"] if r["variant"] != "baseline" else None for r in rows],
        "stored": [r["act_bytes"] / plots.MB for r in rows],
        "time per step": [r["step_seconds"] * 1000 for r in rows],
        "status": [r["status"] for r in rows],
    })


def live_progress() -> None:
    """Other sweeps, whose sweep this is and its progress (redrawn every REFRESH_S while it goes)."""
    job = watched_sweep()
    other_sweeps(job)
    if job is None:
        return
    if job.finished and st.session_state.get("sweep_drawn_running"):
        st.rerun(scope="app")  # finished: redraw the page with the controls enabled
    if job.owner != ui.visitor():
        st.caption(f"Watching sweep #{job.id}, started by {ui.owner_label(job)}.")
    progress(job, sweep_state(job))


def results() -> None:
    """The sweep's charts and table (redrawn every CHART_REFRESH_S while it goes: a point arrives
    once per run, and a table costs the browser more than a chart)."""
    job = watched_sweep()
    if job is None:
        return
    state = sweep_state(job)
    cache, n = ui.figures(), len(state["points"])
    left, right = st.columns([3, 2])
    left.plotly_chart(cache.get(job.id, "pareto", n, lambda: plots.pareto_front(state["points"])),
                      key="sweep_pareto", **ui.CHART)
    right.plotly_chart(cache.get(job.id, "heatmap", n, lambda: plots.accuracy_heatmap(state["points"])),
                       key="sweep_heatmap", **ui.CHART)
    if not state["points"]:
        return
    table = points_frame(state["points"])
    st.dataframe(table, hide_index=True, width="stretch", placeholder="—", column_config={
        "run": st.column_config.TextColumn(width="medium"),
        "test accuracy": st.column_config.NumberColumn("test accuracy (%)", format="%.2f"),
        "change": st.column_config.NumberColumn("change (points)", format="%+.2f",
                                                help="Facto minus baseline test accuracy."),
        "memory saving": st.column_config.NumberColumn("saving (%)", format="%.1f",
                                                       help="1 − Facto / baseline activation bytes."),
        "stored": st.column_config.NumberColumn("stored (MB)", format="%.2f",
                                                help="Activation bytes kept for backward, one batch."),
        "time per step": st.column_config.NumberColumn("ms / step", format="%.0f")})
    st.download_button("Download the table (CSV)", pd.DataFrame(points_table(state["points"])).to_csv(index=False),
                       file_name="facto_sweep.csv", mime="text/csv", key="sweep_csv", icon=":material/download:")


def going_sweeps(job: Job | None) -> list[Job]:
    """Sweeps of this server going or waiting (any visitor's), but `job`."""
    return [j for j in ui.registry().jobs(active_only=True) if j.meta.get("kind") == "sweep"
            and (job is None or j.id != job.id)]


def other_sweeps(job: Job | None) -> None:
    """Sweeps of this server going or waiting (any visitor's), how far each is: watch one. Drawn
    inside a fragment that redraws while they go, so Watch asks for a whole-page redraw itself."""
    jobs = going_sweeps(job)
    if not ui.anything_to_list("listed_other_sweeps", jobs):
        return
    with st.container(border=True):
        st.markdown(f"**Sweeps on this server** ({len(jobs)} going or waiting)")
        for other in jobs:
            state = sweep_state(other)
            where = (f"waiting, position {ui.registry().queue_position(other)}" if other.status == "queued" else
                     f"run {len(state['points']) + 1} of {state['total']}" if state["total"] else "starting")
            a, b = st.columns([5, 1])
            a.markdown(f"#{other.id} · {other.label} · started by {ui.owner_label(other)} · {where}")
            if b.button("Watch", key=f"sweep_watch_{other.id}", width="stretch"):
                ui.set_watched(WATCH, PARAM, other.id)
                st.rerun(scope="app")


# ----------------------------------------------------------------------------- page

init_state()
job = watched_sweep()
running = job is not None and not job.finished
st.session_state["sweep_drawn_running"] = running
locked = running and job.owner == ui.visitor()
sidebar(locked, job)
st.title("Sweep")
n = len(st.session_state[P + "ranks"]) * len(st.session_state[P + "bits"]) * len(st.session_state[P + "updates"])
st.caption(f"The baseline is trained once, then one short Facto run per setting: {ui.count(n, 'setting')} = "
           f"{ui.count(n + 1, 'run')}, each stored in the history. Which settings keep accuracy while storing "
           "least? Baseline: blue; "
           "Facto: orange.")
ui.history_notice()
if running:
    ui.live_view(live_progress, results)
else:
    st.fragment(run_every=ui.REFRESH_S if going_sweeps(job) else None)(live_progress)()
    if job is None:
        st.info("Pick ranks, bits and trained factors on the left and press **Run**. Short runs rank the "
                "settings; if the baseline itself has not learned, the page says so.", icon=":material/grid_on:")
    else:
        results()
