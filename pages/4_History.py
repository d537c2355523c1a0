"""History: every stored run (app, sweeps, CLI): filter, compare on one chart, export, delete.

Layout only: runs come from facto.store, figures from facto.plots.
"""
from __future__ import annotations

import io
from datetime import datetime

import pandas as pd
import streamlit as st

from facto import plots
from facto.store import RunStore, default_db_path

st.set_page_config(page_title="Facto · history", page_icon=":material/history:", layout="wide")
KEEP = dict(persist_state="session")
STALE_AFTER_S = 900
METRICS = {"accuracy": "test accuracy (%)", "loss": "training loss", "act_bytes": "activation memory (MB)"}


@st.cache_resource(show_spinner=False)
def _open_store(path: str) -> RunStore:
    store = RunStore(path)
    store.mark_stale_running(max_age_s=STALE_AFTER_S)
    return store


def delete_selected() -> None:
    store = _open_store(str(default_db_path()))
    ids = st.session_state.get("hist_selected", [])
    deletable = [i for i in ids if store.get_run(i).status != "running"]
    for run_id in deletable:
        store.delete_run(run_id)
    st.session_state["hist_selected"] = [i for i in ids if i not in deletable]
    st.session_state["hist_confirm"] = False
    st.session_state["hist_deleted"] = len(deletable)


store = _open_store(str(default_db_path()))
runs = store.list_runs()
st.title("History")
st.caption(f"Every stored run, newest first — from this app, its sweeps and the command line "
           f"(`python -m facto`). Database: `{store.path}`")
if st.session_state.pop("hist_deleted", None):
    st.toast("Deleted the selected runs.", icon=":material/delete:")
if not runs:
    st.info("No runs stored yet: start one on the main page, the Sweep page or with `python -m facto train`.",
            icon=":material/history:")
    st.stop()

# --------------------------------------------------------------------------- filters
with st.sidebar:
    st.header("Filter")
    statuses = sorted({r.status for r in runs})
    st.multiselect("Status", statuses, default=statuses, key="hist_status", **KEEP,
                   help="completed, interrupted (stopped; what was done is kept), failed, running.")
    kinds = sorted({r.kind for r in runs})
    st.multiselect("Kind", kinds, default=kinds, key="hist_kind", **KEEP,
                   help="compare: baseline and Facto side by side; single: one variant (sweeps).")
    models = sorted({str(r.config.get("model")) for r in runs})
    st.multiselect("Model", models, default=models, key="hist_models", **KEEP)
    datasets = sorted({str(r.config.get("dataset")) for r in runs})
    st.multiselect("Dataset", datasets, default=datasets, key="hist_datasets", **KEEP)
    st.text_input("Name contains", key="hist_text", **KEEP, placeholder="e.g. rank=0.25")

s = st.session_state
shown = [r for r in runs if r.status in s["hist_status"] and r.kind in s["hist_kind"]
         and str(r.config.get("model")) in s["hist_models"] and str(r.config.get("dataset")) in s["hist_datasets"]
         and s["hist_text"].lower() in r.name.lower()]


def _row(r) -> dict:
    summary = r.summary or {}
    acc = summary.get("accuracy") or {}
    trained = ", ".join(summary.get("steps") or acc) or "—"
    return {"id": r.id, "name": r.name, "kind": r.kind, "trained": trained, "status": r.status,
            "started": datetime.fromtimestamp(r.created_at), "duration (s)": r.duration_s,
            "epochs": r.config.get("epochs"), "saving (%)": summary.get("saving_pct"),
            "baseline acc (%)": acc.get("baseline"), "Facto acc (%)": acc.get("facto"),
            "change (points)": summary.get("accuracy_delta"), "error": r.error}


st.subheader(f"{len(shown)} of {len(runs)} runs")
st.dataframe(pd.DataFrame([_row(r) for r in shown]), hide_index=True, height=min(420, 40 + 35 * len(shown)),
             column_config={
                 "started": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                 "duration (s)": st.column_config.NumberColumn(format="%.0f"),
                 "saving (%)": st.column_config.NumberColumn(format="%.1f"),
                 "baseline acc (%)": st.column_config.NumberColumn(format="%.2f"),
                 "Facto acc (%)": st.column_config.NumberColumn(format="%.2f"),
                 "change (points)": st.column_config.NumberColumn(format="%+.2f")})

# --------------------------------------------------------------------------- compare
def label(r) -> str:
    trained = list((r.summary or {}).get("steps") or {})
    only = f", {trained[0]} only" if len(trained) == 1 else ""
    return f"#{r.id} {r.name} ({r.status}{only})"


by_id = {r.id: r for r in runs}
if "hist_selected" not in s:
    s["hist_selected"] = [r.id for r in shown if r.status == "completed"][:3]
s["hist_selected"] = [i for i in s["hist_selected"] if i in by_id]
st.multiselect("Runs to compare", [r.id for r in shown] + [i for i in s["hist_selected"]
                                                          if i not in {r.id for r in shown}],
               key="hist_selected", format_func=lambda i: label(by_id[i]),
               help="Pick several runs: their curves share one chart, their numbers one table.")
selected = [by_id[i] for i in s["hist_selected"] if i in by_id]

chart = dict(theme=None, config={"displaylogo": False})
left, right = st.columns([3, 2])
with left:
    st.segmented_control("Metric", list(METRICS), format_func=METRICS.get, key="hist_metric", default="accuracy",
                         required=True, **KEEP)
    series = [dict(label=f"#{r.id}", rows=store.metrics(r.id)) for r in selected]
    st.plotly_chart(plots.history_chart(series, s["hist_metric"] or "accuracy"), key="hist_chart", **chart)
with right:
    st.plotly_chart(plots.tradeoff_scatter([{**p, "source": "session"} for p in plots.tradeoff_points(selected)],
                                           title="Selected runs: saving vs accuracy change",
                                           empty_text="Only comparisons (kind compare) have both numbers"),
                    key="hist_tradeoff", **chart)

if selected:
    ids = [r.id for r in selected]
    st.subheader("Selected runs side by side")
    table = pd.DataFrame(store.compare_runs(ids)).set_index("id")
    for col in ("created_at", "finished_at"):
        table[col] = [datetime.fromtimestamp(v).strftime("%Y-%m-%d %H:%M:%S") if v else "" for v in table[col]]
    varying = [c for c in table.columns if table[c].astype(str).nunique() > 1 or len(table) == 1]
    shown_table = table[varying].T.map(lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v)))
    shown_table.columns = [f"#{i}" for i in shown_table.columns]
    st.dataframe(shown_table, height=min(600, 40 + 35 * len(varying)))
    runs_csv, metrics_csv = io.StringIO(), io.StringIO()
    store.export_runs_csv(ids, runs_csv)
    frames = []
    for run_id in ids:
        one = io.StringIO()
        store.export_csv(run_id, one)
        one.seek(0)
        frames.append(pd.read_csv(one))
    pd.concat(frames, ignore_index=True).to_csv(metrics_csv, index=False)
    a, b, c = st.columns(3)
    a.download_button("Summary CSV (selected runs)", runs_csv.getvalue(), file_name="facto_runs.csv",
                      mime="text/csv", key="hist_export_runs", icon=":material/download:", width="stretch")
    b.download_button("Metrics CSV (every step)", metrics_csv.getvalue(), file_name="facto_metrics.csv",
                      mime="text/csv", key="hist_export_metrics", icon=":material/download:", width="stretch")
    with c:
        running = [r.id for r in selected if r.status == "running"]
        st.checkbox(f"Yes, delete {len(selected) - len(running)} run(s)", key="hist_confirm",
                    disabled=len(running) == len(selected),
                    help="Runs still running can't be deleted." if running else None)
        st.button("Delete selected runs", key="hist_delete", on_click=delete_selected, type="primary",
                  disabled=not s.get("hist_confirm"), icon=":material/delete:", width="stretch")
