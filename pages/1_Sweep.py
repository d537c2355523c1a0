"""Sweep: short runs over ranks x bits x update modes; Pareto front of saving vs accuracy.

Layout only: `facto.sweep.sweep` trains the baseline once, then one Facto run per point
(each run stored); figures from facto.plots. Same live pattern as the main page: a worker
thread consumes the generator (no Streamlit calls in it), a self-refreshing fragment draws
what has arrived, and Stop asks the worker to close the generator after the current step.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import asdict

import pandas as pd
import streamlit as st

from facto import plots
from facto.data import list_datasets
from facto.factorize import rank_from_text
from facto.models import list_models
from facto.store import RunStore, default_db_path
from facto.sweep import SweepPoint, SweepStart, points_table, sweep, sweep_configs
from facto.train import RunConfig, StartEvent, StepEvent, SummaryEvent

st.set_page_config(page_title="Facto · sweep", page_icon=":material/grid_on:", layout="wide")
log = logging.getLogger("facto.app.sweep")
DEFAULTS = RunConfig()
REFRESH_S, STOP_WAIT_S, STALE_AFTER_S = 1.0, 15.0, 900
RANK_OPTIONS = ["0.125", "0.25", "0.5", "0.75", "1.0"]
BITS_OPTIONS = [None, 1, 2, 3, 4, 5, 6, 7, 8, 16]
UPDATES = ["core", "last", "first", "all", "cycle"]


@st.cache_resource(show_spinner=False)
def _open_store(path: str) -> RunStore:
    store = RunStore(path)
    store.mark_stale_running(max_age_s=STALE_AFTER_S)
    return store


class SweepJob:
    """The sweep, run by a worker thread: finished points, and the current run's progress."""

    def __init__(self, base: RunConfig, ranks: list, bits: list, updates: list, store: RunStore) -> None:
        self.total = len(sweep_configs(base, ranks, bits, updates)) + 1  # validates before anything trains
        self.points: list[dict] = []
        self.current: dict | None = None  # config of the run in progress
        self.run_total, self.step = None, 0
        self.status, self.error = "running", None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(sweep(base, ranks, bits, updates, store=store),),
                                        name="facto-sweep", daemon=True)
        self._thread.start()

    def _work(self, events) -> None:
        try:
            for event in events:
                if isinstance(event, SweepStart):
                    self.total = event.total
                elif isinstance(event, StartEvent):
                    self.current, self.run_total, self.step = event.config, event.total_steps, 0
                elif isinstance(event, StepEvent) and event.variant != "warmup":
                    self.step = max(self.step, event.step)
                elif isinstance(event, SweepPoint):
                    self.points = [*self.points, asdict(event)]
                    self.current = None
                if self._stop.is_set():
                    events.close()  # the run in progress is stored as 'interrupted'
                    self.status = "interrupted"
                    return
            self.status = "completed"
        except ValueError as exc:
            self.error, self.status = str(exc), "failed"
        except Exception as exc:  # noqa: BLE001 - shown to the user
            log.exception("sweep failed")
            self.error, self.status = f"{type(exc).__name__}: {exc}", "failed"

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() and self.status == "running"

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        self._stop.set()
        self._thread.join(wait_s)

    def wait(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)


def start_sweep() -> None:
    s = st.session_state
    s.pop("sweep_error", None)
    if s.get("sweep_job") is not None and s["sweep_job"].status == "running":
        return
    try:
        base = RunConfig(model=s["sweep_model"], dataset=s["sweep_dataset"], epochs=int(s["sweep_epochs"]),
                         batch_size=int(s["sweep_batch_size"]), seed=int(s["sweep_seed"]),
                         recompute=bool(s["sweep_recompute"]), max_train=int(s["sweep_max_train"]) or None,
                         data_dir=str(s["sweep_data_dir"]).strip())
        ranks = [rank_from_text(r) for r in s["sweep_ranks"]]
        s["sweep_job"] = SweepJob(base, ranks, list(s["sweep_bits"]), list(s["sweep_updates"]),
                                  _open_store(str(default_db_path())))
    except ValueError as exc:
        s["sweep_error"] = str(exc)


def stop_sweep() -> None:
    job = st.session_state.get("sweep_job")
    if job is not None and job.status == "running":
        job.stop()


job: SweepJob | None = st.session_state.get("sweep_job")
running = job is not None and job.status == "running"
st.session_state["sweep_locked"] = running
_open_store(str(default_db_path()))
keep = dict(disabled=running, persist_state="session")
with st.sidebar:
    a, b = st.columns(2)
    a.button("Run", key="sweep_run", type="primary", on_click=start_sweep, disabled=running,
             icon=":material/play_arrow:", width="stretch")
    b.button("Stop", key="sweep_stop", on_click=stop_sweep, disabled=not running, icon=":material/stop:",
             width="stretch", help="Stop now; finished points are kept, the run in progress is stored as "
                                   "interrupted.")
    st.multiselect("Ranks", RANK_OPTIONS, default=["0.25", "0.5"], key="sweep_ranks", accept_new_options=True,
                   **keep, help="Fractions of the channels, numbers of channels, or type e.g. energy:0.9. "
                                "Lower rank: less memory, less capacity.")
    st.multiselect("Bits", BITS_OPTIONS, default=[2, 4], key="sweep_bits",
                   format_func=lambda b: "fp32" if b is None else f"{b} bits", **keep,
                   help="Bits per stored value: fewer bits, less memory, noisier gradients.")
    st.multiselect("Update modes", UPDATES, default=["core"], key="sweep_updates", **keep,
                   help="Which factor trains (core trains best from scratch).")
    models, datasets = list_models(), list_datasets()
    st.selectbox("Model", models, index=models.index(DEFAULTS.model), key="sweep_model", **keep)
    st.selectbox("Dataset", datasets, index=datasets.index(DEFAULTS.dataset), key="sweep_dataset", **keep)
    a, b = st.columns(2)
    a.number_input("Epochs per run", min_value=1, max_value=100, value=2, key="sweep_epochs", **keep,
                   help="Short runs rank the settings; more epochs, closer to final accuracy.")
    b.number_input("Train images (0 = all)", min_value=0, max_value=10_000_000, value=0, step=64,
                   key="sweep_max_train", **keep, help="A fixed random subset makes every run faster.")
    a, b = st.columns(2)
    a.select_slider("Batch size", [16, 32, 64, 128, 256], value=DEFAULTS.batch_size, key="sweep_batch_size", **keep)
    b.number_input("Seed", min_value=0, value=0, key="sweep_seed", **keep,
                   help="Every run starts from the same weights and sees the same batches.")
    st.checkbox("Recompute BatchNorm inputs", value=DEFAULTS.recompute, key="sweep_recompute", **keep,
                help="Don't store BatchNorm inputs; recompute them in backward (less memory, a little compute).")
    st.text_input("Data folder", value=DEFAULTS.data_dir, key="sweep_data_dir", **keep)

s = st.session_state
st.title("Sweep")
n_runs = len(s["sweep_ranks"]) * len(s["sweep_bits"]) * len(s["sweep_updates"])
st.caption(f"The baseline is trained once, then one short Facto run per setting: {n_runs} setting(s) = "
           f"{n_runs + 1} runs, each stored in the history. Which settings keep accuracy while storing least?")
if s.get("sweep_error"):
    st.error(f"Can't start this sweep: {s['sweep_error']}", icon=":material/error:")


def sweep_panel() -> None:
    job: SweepJob | None = st.session_state.get("sweep_job")
    if job is None:
        st.info("Pick ranks, bits and update modes on the left and press **Run**.", icon=":material/grid_on:")
        return
    if job.status != "running" and st.session_state.get("sweep_locked"):
        st.rerun(scope="app")  # finished: redraw the page with the controls enabled
    if job.status == "running":
        done = len(job.points)
        cur = job.current
        if cur is None:
            text = f"Run {done + 1} of {job.total}: loading and factorizing…"
            frac = done / job.total
        else:
            what = "baseline (dense fp32)" if done == 0 else (
                f"rank {cur['rank']}, {'fp32' if cur['bits'] is None else str(cur['bits']) + ' bits'}, "
                f"update {cur['update']}")
            part = job.step / job.run_total if job.run_total else 0.0
            text = f"Run {done + 1} of {job.total}: {what} · step {job.step} of {job.run_total}"
            frac = (done + part) / job.total
        if job.stopping:
            text = f"Stopping: run {done + 1} of {job.total} finishes its current step first…"
        st.progress(min(frac, 1.0), text=text)
    elif job.status == "completed":
        st.success(f"Sweep done: {len(job.points)} runs, all stored in the history.", icon=":material/check_circle:")
    elif job.status == "interrupted":
        st.warning(f"Stopped after {len(job.points)} of {job.total} runs; the finished points are kept.",
                   icon=":material/pause_circle:")
    else:
        st.error(f"The sweep could not go on: {job.error}", icon=":material/error:")
    chart = dict(theme=None, config={"displaylogo": False})
    left, right = st.columns([3, 2])
    left.plotly_chart(plots.pareto_front(job.points), key="sweep_pareto", **chart)
    right.plotly_chart(plots.accuracy_heatmap(job.points), key="sweep_heatmap", **chart)
    if job.points:
        table = pd.DataFrame(points_table([SweepPoint(**p) for p in job.points]))
        table["act_bytes"] = table["act_bytes"] / plots.MB
        base = table["variant"] == "baseline"
        table["bits"] = [("—" if is_base else "fp32") if b is None or b != b else f"{int(b)}"
                         for b, is_base in zip(table["bits"].astype(object), base)]
        table["rank"] = ["—" if is_base else str(r) for r, is_base in zip(table["rank"], base)]
        table = table.rename(columns={"act_bytes": "stored (MB)", "saving_pct": "saving (%)",
                                      "accuracy": "accuracy (%)", "accuracy_delta": "change (points)",
                                      "step_seconds": "s/step"})
        cols = ["variant", "rank", "bits", "update", "status", "accuracy (%)", "change (points)", "saving (%)",
                "stored (MB)", "s/step"]
        st.dataframe(table[cols], hide_index=True, column_config={
            "accuracy (%)": st.column_config.NumberColumn(format="%.2f"),
            "change (points)": st.column_config.NumberColumn(format="%+.2f"),
            "saving (%)": st.column_config.NumberColumn(format="%.1f"),
            "stored (MB)": st.column_config.NumberColumn(format="%.2f"),
            "s/step": st.column_config.NumberColumn(format="%.2f")})
        st.download_button("Download the table (CSV)", table.to_csv(index=False), file_name="facto_sweep.csv",
                           mime="text/csv", key="sweep_csv", icon=":material/download:")


st.fragment(run_every=REFRESH_S if running else None)(sweep_panel)()
