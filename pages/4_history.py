"""History: every stored run (app, sweeps, CLI): filter, compare on one chart, export, download the
trained models kept with a run, delete.

Layout only: runs come from facto.store.history (through `ui.history()`), figures from facto.plots,
setting labels and formats from facto.config's settings. In room mode a visitor sees (and
may delete) only the runs they started on this server.
"""
from __future__ import annotations

import io
from datetime import datetime
from typing import Any, Callable

import pandas as pd
import streamlit as st

import ui
from facto import plots
from facto.config import SETTINGS
from facto.engine.train import too_short_to_compare
from facto.store.kept import models_folder, why_none_kept

ui.page("Facto · history")

P = "hist_"
METRICS = {"accuracy": "Test accuracy", "loss": "Training loss", "act_bytes": "Stored for backward"}
STATUS_WORDS = {"completed": "completed", "interrupted": "stopped (kept)", "failed": "failed", "running": "running"}
KIND_WORDS = {"compare": "comparison", "sweep": "sweep run", "single": "single run"}
VARIANT_WORDS = {"baseline": "baseline", "facto": "Facto"}


def _mb(v: float) -> str:
    return f"{v / plots.MB:,.2f} MB"


# Results side by side: summary field (dotted for nested values) -> label, format of the value.
RESULT_FIELDS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "saving_pct": ("Memory saving", lambda v: f"{v:.1f} %"),
    "accuracy_delta": ("Test accuracy change", lambda v: f"{v:+.2f} points"),
    "accuracy.baseline": ("Baseline test accuracy", lambda v: f"{v:.2f} %"),
    "accuracy.facto": ("Facto test accuracy", lambda v: f"{v:.2f} %"),
    "act_bytes.baseline": ("Baseline: stored for backward", _mb),
    "act_bytes.facto": ("Facto: stored for backward", _mb),
    "peak_cuda.baseline": ("Baseline: peak CUDA memory", _mb),
    "peak_cuda.facto": ("Facto: peak CUDA memory", _mb),
    "peak_reserved.baseline": ("Baseline: CUDA memory reserved by the allocator", _mb),
    "peak_reserved.facto": ("Facto: CUDA memory reserved by the allocator", _mb),
    "process_peak.baseline": ("Baseline: process peak (what the machine gave it)", _mb),
    "process_peak.facto": ("Facto: process peak (what the machine gave it)", _mb),
    "step_seconds.baseline": ("Baseline: time per step", lambda v: f"{1000 * v:,.0f} ms"),
    "step_seconds.facto": ("Facto: time per step", lambda v: f"{1000 * v:,.0f} ms"),
    "steps.baseline": ("Baseline: steps trained", lambda v: f"{v:,}"),
    "steps.facto": ("Facto: steps trained", lambda v: f"{v:,}"),
    "params.baseline": ("Baseline: parameters", lambda v: f"{v:,}"),
    "params.facto": ("Facto: parameters", lambda v: f"{v:,}"),
    "wall_seconds": ("Wall time (data and model set-up included)", ui.duration),
}


def _summary_value(summary: dict | None, field: str) -> Any:
    value: Any = summary or {}
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def setting_text(name: str, value: Any) -> str:
    """A stored config value as the app shows it (label formats from the setting)."""
    s = SETTINGS[name]
    if s.kind == "bool":
        return "on" if value else "off"
    text = s.format(value)
    return f"{text} {s.unit}" if s.unit and value is not None and s.kind != "bits" else text


def trained(run) -> str:
    variants = list((run.summary or {}).get("steps") or {})
    return " and ".join(VARIANT_WORDS.get(v, v) for v in variants) if variants else "—"


def run_title(run) -> str:
    """'#12 · simple_cnn on digits · rank 0.5 · update core · 4-bit …'."""
    only = "" if trained(run) in ("—", "baseline and Facto") else f" ({trained(run)} only)"
    return f"#{run.id} · {plots.config_label(run.config)}{only}"


# ----------------------------------------------------------------------------- delete

def deletable(run) -> str | None:
    """Why `run` may not be deleted here (None when it may)."""
    store = ui.history()
    if store is None or not getattr(store, "writable", True):
        return "the run history is read-only"
    if run.status == "running":
        return "it is still running"
    if ui.room().enabled and run.id not in ui.runs_started_by():
        return "in room mode you can delete only the runs you started"
    return None


def delete_selected() -> None:
    s = st.session_state
    store = ui.history()
    ids = s.get(P + "selected", [])
    done, refused, freed = [], [], 0
    for run_id in ids:
        try:
            run = store.get_run(run_id)
        except ValueError:
            continue
        why = deletable(run)
        if why is None:
            size = kept_bytes(store, run_id)
            store.delete_run(run_id)  # its kept model files too
            done.append(run_id)
            freed += size
        else:
            refused.append(f"#{run_id}: {why}")
    s[P + "selected"] = [i for i in ids if i not in done]
    s[P + "confirm"] = False
    s[P + "deleted"] = (done, refused, freed)


# ----------------------------------------------------------------------------- kept models

def kept_models(store, run_id: int) -> dict:
    """Run `run_id`'s kept model files by variant (none when the history cannot list them)."""
    try:
        return store.kept_models(run_id)
    except (AttributeError, OSError, ValueError):
        return {}


def kept_bytes(store, run_id: int) -> int:
    return sum(m.bytes for m in kept_models(store, run_id).values())


def _reader(path) -> Callable[[], bytes]:
    """The file's bytes, read when its download is asked for (not on every redraw)."""
    return lambda: path.read_bytes()


def start_from(run) -> None:
    """Train & compare, set to start from `run`'s kept baseline (its model and dataset, init run:ID)."""
    st.session_state["model"] = run.config.get("model", st.session_state.get("model"))
    st.session_state["dataset"] = run.config.get("dataset", st.session_state.get("dataset"))
    st.session_state["init"] = f"run:{run.id}"
    st.session_state["history_start_from"] = run.id


def kept_section(store, runs: list) -> None:
    """The selected runs' kept models: a download per file, or why a run kept none."""
    st.subheader("Trained models")
    st.caption("Each file is a plain PyTorch state dict of the run's original architecture (Facto's model as "
               "`facto.to_dense` gives it): `model.load_state_dict(torch.load(file))` reads it into "
               "`facto.engine.models.create_model(model, classes, channels)`. `--init run:ID` starts a run from a "
               "kept baseline.")
    for run in runs:
        kept = kept_models(store, run.id)
        if not kept:
            st.caption(f"#{run.id}: no trained model kept: {why_none_kept(run)}.")
            continue
        columns = st.columns(len(VARIANT_WORDS) + 1)
        if "baseline" in kept:
            columns[-1].button(f"Train from #{run.id}'s baseline", key=f"{P}start_from_{run.id}",
                               on_click=start_from, args=(run,), icon=":material/play_arrow:", width="stretch",
                               help="Open Train & compare with this model, its dataset and Start from run:ID.")
        when = ", as stopped" if run.status == "interrupted" else ""  # the weights it had reached
        for column, (variant, model) in zip(columns, kept.items()):
            column.download_button(f"#{run.id} · {VARIANT_WORDS.get(variant, variant)} model{when} ({_mb(model.bytes)})",
                                   _reader(model.path), file_name=f"facto-run-{run.id}-{variant}.pt",
                                   mime="application/octet-stream", key=f"{P}model_{run.id}_{variant}",
                                   icon=":material/download:", width="stretch", on_click="ignore")


# ----------------------------------------------------------------------------- tables

def short_settings(config: dict) -> str:
    """'simple_cnn · digits · rank 0.5 · 4-bit · core · recompute · 4 ep' (the runs table's column)."""
    return plots.config_label(config, compact=True)


def _accuracy(run) -> str | None:
    acc = (run.summary or {}).get("accuracy") or {}
    values = [f"{acc[v]:.1f}" if acc.get(v) is not None else "—" for v in ("baseline", "facto") if v in acc]
    return " → ".join(values) if values else None


def runs_frame(runs: list, kept: dict[int, int]) -> pd.DataFrame:
    """The runs table; `kept`: run id -> bytes of its kept models."""
    return pd.DataFrame({
        "#": [r.id for r in runs],
        "run": [short_settings(r.config) for r in runs],
        "kind": [KIND_WORDS.get(r.kind, r.kind) + ("" if trained(r) in ("—", "baseline and Facto")
                                                   else f" · {trained(r)}") for r in runs],
        "status": [STATUS_WORDS.get(r.status, r.status) for r in runs],
        "started": [datetime.fromtimestamp(r.created_at) for r in runs],
        "saving": [_summary_value(r.summary, "saving_pct") for r in runs],
        "change": [_summary_value(r.summary, "accuracy_delta") for r in runs],
        "accuracy": [_accuracy(r) for r in runs],
        "models": [(kept[r.id] / plots.MB) if kept.get(r.id) else None for r in runs],
    })


# Widths that fit a 1280-pixel screen with the sidebar open (the table is 820 px wide there); the
# settings text is cut first (hover shows it, and the selection below shows it whole).
RUNS_COLUMNS = {
    "#": st.column_config.NumberColumn("#", width=40, format="%d"),
    "run": st.column_config.TextColumn("settings", width=190),
    "kind": st.column_config.TextColumn(width=100),
    "status": st.column_config.TextColumn(width=95),
    "started": st.column_config.DatetimeColumn(format="MMM D, HH:mm", width=95),
    "saving": st.column_config.NumberColumn("saving %", format="%.1f", width=65,
                                            help="Memory saving: 1 − Facto / baseline activation bytes."),
    "change": st.column_config.NumberColumn("change", format="%+.2f", width=60,
                                            help="Facto minus baseline test accuracy, in points."),
    "accuracy": st.column_config.TextColumn("test acc. %", width=95,
                                            help="Test accuracy: baseline → Facto (one value: the variant trained)."),
    "models": st.column_config.NumberColumn("models MB", format="%.1f", width=70,
                                            help="Disk used by the trained models kept with the run (none: "
                                                 "switched off, or the run did not end)."),
}


def side_by_side(runs: list, every_setting: bool) -> pd.DataFrame:
    """One row per field (plain label, value with its unit), one column per run."""
    columns = [f"#{r.id}" for r in runs]
    rows: list[tuple[str, list[str]]] = [
        ("Kind", [KIND_WORDS.get(r.kind, r.kind) for r in runs]),
        ("Status", [STATUS_WORDS.get(r.status, r.status) for r in runs]),
        ("Trained", [trained(r) for r in runs]),
        ("Started", [datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M") for r in runs]),
        ("Duration (as stored)", [ui.duration(r.duration_s) if r.duration_s is not None else "—" for r in runs]),
    ]
    for field, (label, fmt) in RESULT_FIELDS.items():
        values = [_summary_value(r.summary, field) for r in runs]
        if any(v is not None for v in values):
            rows.append((label, ["—" if v is None else fmt(v) for v in values]))
    for name, s in SETTINGS.items():
        if not any(name in r.config for r in runs):
            continue
        values = ["—" if name not in r.config else setting_text(name, r.config[name]) for r in runs]
        if every_setting or len(runs) == 1 or len(set(values)) > 1:
            rows.append((s.label, values))
    errors = [r.error or "" for r in runs]
    if any(errors):
        rows.append(("Error", [e or "—" for e in errors]))
    return pd.DataFrame([v for _, v in rows], columns=columns, index=[label for label, _ in rows])


def exports(store, ids: list[int]) -> tuple[str, str]:
    runs_csv = io.StringIO()
    store.export_runs_csv(ids, runs_csv)
    frames = []
    for run_id in ids:
        one = io.StringIO()
        if store.export_csv(run_id, one):
            one.seek(0)
            frames.append(pd.read_csv(one))
    metrics = pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else ""
    return runs_csv.getvalue(), metrics


# ----------------------------------------------------------------------------- page

def _options(key: str, *values) -> list[str]:
    """Stable options: the known values, those of the runs, and what is chosen already (Streamlit
    silently drops a chosen value that is no longer an option, e.g. after its runs were deleted)."""
    return sorted({str(v) for group in values for v in group} | set(st.session_state.get(key) or []))


def filters(runs: list) -> list:
    with st.sidebar:
        st.header("Filter")
        st.caption("Nothing chosen: all.")
        st.multiselect("Status", _options(P + "status", STATUS_WORDS, (r.status for r in runs)), key=P + "status",
                       format_func=lambda v: STATUS_WORDS.get(v, v), placeholder="all", persist_state="session",
                       help="stopped (kept): a run stopped early; what was done is stored.")
        st.multiselect("Kind", _options(P + "kind", KIND_WORDS, (r.kind for r in runs)), key=P + "kind",
                       format_func=lambda k: KIND_WORDS.get(k, k), placeholder="all", persist_state="session",
                       help="comparison: baseline and Facto side by side (main page); sweep run: one variant "
                            "of a sweep; single run: one variant (command line).")
        st.multiselect("Model", _options(P + "models", (r.config.get("model", "—") for r in runs)),
                       key=P + "models", placeholder="all", persist_state="session")
        st.multiselect("Dataset", _options(P + "datasets", (r.config.get("dataset", "—") for r in runs)),
                       key=P + "datasets", placeholder="all", persist_state="session")
        st.text_input("Settings contain", key=P + "text", placeholder="e.g. rank 0.25", persist_state="session")
    s = st.session_state

    def keep(r) -> bool:
        return ((not s.get(P + "status") or r.status in s[P + "status"])
                and (not s.get(P + "kind") or r.kind in s[P + "kind"])
                and (not s.get(P + "models") or str(r.config.get("model", "—")) in s[P + "models"])
                and (not s.get(P + "datasets") or str(r.config.get("dataset", "—")) in s[P + "datasets"])
                and (s.get(P + "text") or "").lower() in plots.config_label(r.config).lower())

    return [r for r in runs if keep(r)]


def newest(runs: list) -> list[int]:
    """The newest run that trained something (completed, stopped or running), else the newest."""
    for r in runs:
        if r.status in ("completed", "interrupted", "running"):
            return [r.id]
    return [runs[0].id] if runs else []


st.title("History")
st.caption("Every stored run, newest first: from the main page, the Sweep page and the command line "
           "(`python -m facto`). Baseline: blue; Facto: orange.")
ui.history_notice()
if st.session_state.pop("history_start_from", None) is not None:  # "Train from #N's baseline" was pressed
    st.switch_page("app.py")
store = ui.history()
room = ui.room()
if store is None:
    st.info("Nothing to show: the run history is off (see above). Runs still train on the other pages.",
            icon=":material/history:")
    ui.sidebar_footer()
    st.stop()

writable = getattr(store, "writable", True)
all_runs = store.list_runs()
if room.enabled:
    mine = ui.runs_started_by()
    all_runs = [r for r in all_runs if r.id in mine]
    st.caption("Room mode: only the runs you started on this server are listed.")
deleted = st.session_state.pop(P + "deleted", None)
if deleted:
    done, refused, freed = deleted
    if done:
        st.toast(f"Deleted {ui.count(len(done), 'run')}" + (f" and freed {_mb(freed)} of kept models." if freed
                                                              else "."), icon=":material/delete:")
    for why in refused:
        st.error(f"Not deleted: {why}.", icon=":material/block:")
if not all_runs:
    st.info("You have not started a run on this server yet: start one on the main page or the Sweep page."
            if room.enabled else
            "No runs stored yet: start one on the main page, the Sweep page or with `python -m facto train`.",
            icon=":material/history:")
    ui.sidebar_footer()
    st.stop()

shown = filters(all_runs)
ui.sidebar_footer()
st.subheader(f"{len(shown)} of {ui.count(len(all_runs), 'run')}")
kept_sizes = {r.id: kept_bytes(store, r.id) for r in shown}
st.dataframe(runs_frame(shown, kept_sizes), hide_index=True, width="stretch", placeholder="—",
             height=min(420, 38 + 35 * max(len(shown), 1)), column_config=RUNS_COLUMNS)
with_models = [i for i, b in kept_sizes.items() if b]
if with_models:
    where = "" if room.enabled else f" in `{models_folder(store.path)}`"
    st.caption(f"Trained models kept with the {ui.count(len(shown), 'listed run')}: {_mb(sum(kept_sizes.values()))} "
               f"({ui.count(len(with_models), 'run')} kept some){where}.")

by_id = {r.id: r for r in all_runs}
s = st.session_state
if P + "selected" not in s:
    s[P + "selected"] = newest(all_runs)
s[P + "selected"] = [i for i in s[P + "selected"] if i in by_id]
options = [r.id for r in shown] + [i for i in s[P + "selected"] if i not in {r.id for r in shown}]
st.multiselect("Runs to compare", options, key=P + "selected", format_func=lambda i: run_title(by_id[i]),
               help="Pick several runs: their curves share one chart, their numbers one table. The newest run "
                    "is picked when you open the page.")
selected = [by_id[i] for i in s[P + "selected"] if i in by_id]
short = [(r.id, _summary_value(r.summary, "accuracy.baseline")) for r in selected]
short = [(i, acc) for i, acc in short if too_short_to_compare(acc)]
if short:
    st.warning(", ".join(f"#{i}" for i, _ in short) + ": the baseline reached only "
               + ", ".join(f"{acc:.1f} %" for _, acc in short) + " test accuracy, too short to compare baseline "
               "and Facto: read their accuracy change as noise (train longer: more epochs or images).",
               icon=":material/warning:")

left, right = st.columns([3, 2])
with left:
    st.segmented_control("Metric", list(METRICS), format_func=METRICS.get, key=P + "metric", default="accuracy",
                         required=True)
    series = [dict(label=f"#{r.id}", rows=store.metrics(r.id)) for r in selected]
    st.plotly_chart(plots.history_chart(series, s.get(P + "metric") or "accuracy"), key="hist_chart", **ui.CHART)
    st.caption("Each run keeps its own line dash and marker; baseline lines are blue, Facto lines orange.")
with right:
    st.plotly_chart(plots.tradeoff_scatter([{**p, "source": "session"} for p in plots.tradeoff_points(selected)],
                                           title="Selected runs: saving vs accuracy change",
                                           empty_text="Comparisons (baseline and Facto) appear here",
                                           session_name="Selected runs"),
                    key="hist_tradeoff", **ui.CHART)

if selected:
    st.subheader("Selected runs side by side")
    every = st.checkbox("Show every setting, also those the runs share", key=P + "every",
                        disabled=len(selected) == 1)
    table = side_by_side(selected, every)
    st.dataframe(table, width="stretch", height=min(720, 38 + 35 * len(table)),
                 column_config={"_index": st.column_config.TextColumn("", width="medium")})
    kept_section(store, selected)
    runs_csv, metrics_csv = exports(store, [r.id for r in selected])
    a, b, c = st.columns(3)
    a.download_button("Summary CSV (selected runs)", runs_csv, file_name="facto_runs.csv", mime="text/csv",
                      key="hist_export_runs", icon=":material/download:", width="stretch")
    b.download_button("Metrics CSV (every step)", metrics_csv, file_name="facto_metrics.csv", mime="text/csv",
                      key="hist_export_metrics", icon=":material/download:", width="stretch",
                      disabled=not metrics_csv)
    with c:
        may = [r for r in selected if deletable(r) is None]
        reasons = sorted({deletable(r) for r in selected} - {None})
        why = ("Not possible for " + ", ".join(f"#{r.id}" for r in selected if r not in may) + ": "
               + "; ".join(reasons) + ".") if reasons else None
        freeing = sum(kept_bytes(store, r.id) for r in may)
        st.checkbox(f"Yes, delete {ui.count(len(may), 'run')}", key=P + "confirm", disabled=not may, help=why)
        if freeing:
            st.caption(f"Deleting also removes their kept models: {_mb(freeing)} freed.")
        st.button("Delete selected runs", key="hist_delete", on_click=delete_selected, type="primary",
                  disabled=not may or not s.get(P + "confirm"), icon=":material/delete:", width="stretch",
                  help=why)
        if not writable:
            st.caption("Delete is off: the run history is read-only.")
