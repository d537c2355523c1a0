"""Layers: what factorization does to each layer, and what each layer stores for backward.

No training: `facto.memory.analysis.analyse_layers` builds the model exactly as a run builds it,
factorizes it and measures one training-mode forward. Layout only: numbers and the
explanations of rows where Facto stores more come from facto.memory.analysis, figures from facto.plots.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

import ui
from facto import plots
from facto.config import RunConfig
from facto.engine.inspect_weights import (FRESH_NOTE, ChosenWeights, WeightsInspection, choose_weights,
                                         inspect_weights)
from facto.memory.analysis import LayerAnalysis, analyse_layers

ui.page("Facto · layers")

P = "layers_"
FIELDS = ["model", "dataset", "rank", "update", "bits", "block", "recompute", "batch_size", "seed"]


@st.cache_data(show_spinner="Building, factorizing and measuring one batch…", max_entries=24)
def analyse(config: dict, max_batch: int) -> LayerAnalysis:
    return analyse_layers(RunConfig.from_dict(config), max_batch=max_batch)


@st.cache_data(show_spinner="Loading the weights, factorizing them and testing both models…", max_entries=12)
def spectra(config: dict, init: str) -> WeightsInspection:
    config = RunConfig.from_dict(config)
    weights = (ChosenWeights("random", f"fresh weights (seed {config.seed})", False) if init == "random"
               else choose_weights(config.replace(init=init)))
    return inspect_weights(config, weights=weights)


def sidebar() -> None:
    with st.sidebar:
        st.header("Layer analysis")
        st.caption("Nothing is trained here: the model is built and factorized as a run would, then one batch "
                   "goes forward. The settings start at the main page's defaults.")
        ui.setting_widget("model", P + "model", options=ui.allowed_models())
        ui.setting_widget("dataset", P + "dataset", help_extra="It gives the input shape and the number of classes.")
        for name in ("rank", "update", "bits", "recompute", "block", "batch_size", "seed"):
            ui.setting_widget(name, P + name)
    ui.sidebar_footer()


def cards(a: LayerAnalysis) -> None:
    n_fact = sum(r.kind == "factorized" for r in a.report)
    c = st.columns(4)
    c[0].metric("Layers factorized", f"{n_fact} of {len(a.report)}", **ui.CARD,
                help="Conv and linear layers; the first conv and the classifier stay dense (see the report).")
    c[1].metric("Parameters", f"{a.params['facto']:,}", **ui.CARD,
                delta=f"{a.params['facto'] - a.params['baseline']:+,} vs dense", delta_color="inverse",
                help=f"Dense model: {a.params['baseline']:,}. Trained in Facto: {a.trainable:,}.")
    c[2].metric("Stored for backward", f"{a.facto_total / plots.MB:,.2f} MB", **ui.CARD,
                delta=f"{(a.facto_total - a.dense_total) / plots.MB:+,.2f} MB vs dense", delta_color="inverse",
                help=f"One batch of {a.batch} images of shape {'×'.join(map(str, a.input_shape))}. "
                     f"Dense: {a.dense_total / plots.MB:,.2f} MB.")
    c[3].metric("Memory saving", "—" if a.saving_pct is None else f"{a.saving_pct:.1f} %", **ui.CARD,
                help="1 − Facto / dense stored bytes for this batch.")


def bytes_table(a: LayerAnalysis) -> None:
    rows = a.rows()
    frame = pd.DataFrame({
        "layer": [n for n, _, _ in rows],
        "baseline type": [a.dense_types.get(n) for n, _, _ in rows],
        "Facto type": [a.facto_types.get(n) for n, _, _ in rows],
        "baseline": [d / plots.MB for _, d, _ in rows],
        "Facto": [f / plots.MB for _, _, f in rows],
        "change": [(f - d) / plots.MB for _, d, f in rows],
    })
    st.dataframe(frame, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(frame)), placeholder="—",
                 column_config={
                     "layer": st.column_config.TextColumn(width="medium"),
                     "baseline": st.column_config.NumberColumn("baseline (MB)", format="%.3f"),
                     "Facto": st.column_config.NumberColumn("Facto (MB)", format="%.3f"),
                     "change": st.column_config.NumberColumn("change (MB)", format="%+.3f",
                                                             help="Facto minus baseline; > 0: Facto stores more.")})


# ----------------------------------------------------------------------------- page

ui.init_widgets(P, FIELDS)
sidebar()
st.title("Layers")
st.caption("Per layer: how the weights are factorized, and how many bytes each layer keeps for backward for one "
           "batch — dense baseline (blue) vs Facto (orange). Measured on random images of the dataset's shape "
           "(stored bytes depend on shapes, not on pixel values).")
errors = ui.field_errors(P, FIELDS)
if errors:
    for error in errors:
        st.error(f"Can't analyse this model: {error}", icon=":material/error:")
    st.stop()
try:
    analysis = analyse(ui.config_from_widgets(P, FIELDS).to_dict(), ui.page_limits().max_batch)
except ValueError as exc:  # a combination the model can't take, or a batch above the server's limit
    st.error(f"Can't analyse this model: {exc}", icon=":material/error:")
    st.stop()

cards(analysis)
st.plotly_chart(plots.layer_bytes_bars(analysis.bytes_by_variant(), analysis.type_labels(),
                                       title=f"Stored for backward per layer, one batch of {analysis.batch}"),
                key="layers_bytes_chart", **ui.CHART)
increases = analysis.increases()
if increases:
    st.subheader("Where Facto stores more than the baseline")
    for inc in increases:
        st.info(inc.text(), icon=":material/swap_horiz:")
st.subheader("Stored bytes per layer")
bytes_table(analysis)
st.plotly_chart(plots.params_bars(analysis.report), key="layers_params_chart", **ui.CHART)
st.subheader("Factorization report")
ui.factorization_table(analysis.report_rows())
st.caption("The reconstruction error is large on freshly initialised weights (they are noise-like); a warm start "
           "(main page) trains the dense model first, then factorizes it.")


def weights_section(config: RunConfig) -> None:
    """The chosen weights' spectra, energy kept per layer and the accuracy before any training."""
    st.subheader("Spectrum and accuracy before training")
    latest = choose_weights(config.replace(init="random"))
    options = {"fresh weights": "random"}
    if latest.trained:
        options = {f"run {latest.run_id} (latest finished {config.model} on {config.dataset})": latest.init,
                   **options}
    choice = st.radio("Weights", list(options), key=P + "weights", horizontal=True,
                      help="The baseline a finished run trained and kept (the latest of this model on this "
                           "dataset), or fresh weights drawn from the seed.")
    try:
        w = spectra(config.to_dict(), options[choice])
    except ValueError as exc:  # missing data, weights that no longer load
        st.error(f"Can't test these weights: {exc}", icon=":material/error:")
        return
    ui.accuracy_cards(st.columns(4), w, config.dataset)
    if not w.weights.trained:
        st.info(FRESH_NOTE, icon=":material/info:")
    st.caption(f"Weights: {w.weights.source}. Energy kept: the share of squared singular values a rank keeps "
               "(per unfolding; 'both' for the factorized weight).")
    st.plotly_chart(plots.spectrum_figure(w.spectra, w.fresh_spectra if w.weights.trained else (),
                                          label="trained" if w.weights.trained else "fresh"),
                    key="layers_spectrum_chart", **ui.CHART)
    rows = w.energy_rows()
    frame = pd.DataFrame({"layer": [r["layer"] for r in rows], "ranks": [r["ranks"] for r in rows],
                          "out": [100 * r["energy_out"] for r in rows], "in": [100 * r["energy_in"] for r in rows],
                          "both": [100 * r["energy"] for r in rows],
                          "fresh": [100 * r["fresh_energy"] for r in rows]})
    if not w.weights.trained:
        frame = frame.drop(columns="fresh")
    st.dataframe(frame, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(frame)),
                 column_config={name: st.column_config.NumberColumn(f"energy kept, {name} (%)", format="%.1f")
                                for name in ("out", "in", "both", "fresh")})


weights_section(ui.config_from_widgets(P, FIELDS))
