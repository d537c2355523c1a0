"""Layers: what factorization does to each layer, and what each layer stores for backward.

No training: the model is built, factorized and run forward on one batch. Layout only;
numbers from facto.train / facto.factorize, figures from facto.plots.
"""
from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import streamlit as st
import torch

from facto import plots
from facto import train as engine
from facto.data import dataset_info, list_datasets, load_data
from facto.factorize import describe, rank_from_text
from facto.models import create_model, list_models
from facto.train import RunConfig

st.set_page_config(page_title="Facto · layers", page_icon=":material/layers:", layout="wide")
DEFAULTS = RunConfig()
BITS_OPTIONS = [None, 1, 2, 3, 4, 5, 6, 7, 8, 16]
KEEP = dict(persist_state="session")


@st.cache_data(show_spinner="Factorizing and measuring one batch…", max_entries=24)
def analyse(config: RunConfig) -> dict:
    """Factorization report and stored bytes per layer for one batch, dense vs Facto."""
    data = load_data(config.dataset, config.data_dir, config.batch_size, seed=config.seed,
                     max_train=config.batch_size, max_test=1)
    torch.manual_seed(config.seed)
    dense = create_model(config.model, data.info.num_classes, data.info.in_channels)
    facto = engine.build_facto(config, dense)  # exactly as a training run builds it
    x = next(iter(data.train_loader))[0]
    types = {n: type(m).__name__ for n, m in dense.named_modules() if n}
    types.update({n: type(m).__name__ for n, m in facto.named_modules() if n and n not in types})
    facto_types = {n: type(m).__name__ for n, m in facto.named_modules() if n}
    return dict(
        report=[asdict(r) for r in describe(facto)],
        layer_bytes={"baseline": engine.layer_bytes(dense, x, None, config.block),
                     "facto": engine.layer_bytes(facto, x, config.bits, config.block)},
        types=types, facto_types=facto_types, batch=int(x.shape[0]), shape=tuple(x.shape[1:]),
        params={"baseline": sum(p.numel() for p in dense.parameters()),
                "facto": sum(p.numel() for p in facto.parameters())},
        trainable=sum(p.numel() for p in facto.parameters() if p.requires_grad))


with st.sidebar:
    st.header("Layer analysis")
    models, datasets = list_models(), list_datasets()
    st.selectbox("Model", models, index=models.index(DEFAULTS.model), key="layers_model", **KEEP,
                 help="The model to factorize. Nothing is trained on this page.")
    st.selectbox("Dataset", datasets, index=datasets.index(DEFAULTS.dataset), key="layers_dataset", **KEEP,
                 help="Gives the input shape, the number of classes and the batch that is measured.")
    st.text_input("Rank", value=str(DEFAULTS.rank), key="layers_rank", **KEEP,
                  help="A fraction of the channels (0.5), a number of channels (16), 'energy:0.9' or 'vbmf'. "
                       "Lower rank: fewer channels stored, larger reconstruction error.")
    updates = ["core", "last", "first", "all", "cycle"]
    st.selectbox("Trained factor (update)", updates, key="layers_update", **KEEP,
                 help="Which factor trains; only its input is stored for backward.")
    st.selectbox("Bits per stored value", BITS_OPTIONS, index=BITS_OPTIONS.index(DEFAULTS.bits), key="layers_bits",
                 format_func=lambda b: "none (fp32)" if b is None else f"{b} bits", **KEEP,
                 help="Compression of what Facto stores. The baseline is always dense fp32.")
    st.select_slider("Block size", [16, 32, 64, 128, 256, 512, 1024], value=DEFAULTS.block, key="layers_block",
                     **KEEP, help="Values per quantization block: smaller blocks, less error, more metadata.")
    st.checkbox("Recompute BatchNorm inputs", key="layers_recompute", **KEEP,
                help="Don't store BatchNorm inputs; recompute them in backward.")
    st.select_slider("Batch size", [8, 16, 32, 64, 128, 256], value=DEFAULTS.batch_size, key="layers_batch",
                     **KEEP, help="Stored bytes grow in proportion to the batch.")
    st.text_input("Data folder", value=DEFAULTS.data_dir, key="layers_data_dir", **KEEP,
                  help="Where torchvision datasets are read from (digits needs none).")

st.title("Layers")
st.caption("Per layer: how the weights were factorized, and how many bytes each layer keeps for backward "
           "for one batch — dense baseline (blue) vs Facto (orange). Nothing is trained here.")

s = st.session_state
try:
    config = RunConfig(model=s["layers_model"], dataset=s["layers_dataset"], rank=rank_from_text(s["layers_rank"]),
                       update=s["layers_update"], bits=s["layers_bits"], block=int(s["layers_block"]),
                       recompute=bool(s["layers_recompute"]), batch_size=int(s["layers_batch"]),
                       data_dir=str(s["layers_data_dir"]).strip())
    result = analyse(config)
except ValueError as exc:  # a bad rank, a dataset not on disk, ...
    st.error(f"Can't analyse this model: {exc}", icon=":material/error:")
    st.stop()

report = result["report"]
base_total = sum(result["layer_bytes"]["baseline"].values())
facto_total = sum(result["layer_bytes"]["facto"].values())
n_fact = sum(r["kind"] == "factorized" for r in report)
c = st.columns(4)
c[0].metric("Layers factorized", f"{n_fact} of {len(report)}", border=True,
            help="Conv and linear layers; the first conv and the classifier stay dense (see the table).")
c[1].metric("Parameters", f"{result['params']['facto']:,}", border=True,
            delta=f"{result['params']['facto'] - result['params']['baseline']:+,} vs dense", delta_color="inverse",
            help=f"Dense model: {result['params']['baseline']:,}. Trained in Facto: {result['trainable']:,}.")
c[2].metric("Stored for backward", f"{facto_total / plots.MB:,.2f} MB", border=True,
            delta=f"{(facto_total - base_total) / plots.MB:+,.2f} MB vs dense", delta_color="inverse",
            help=f"One batch of {result['batch']} images of shape {result['shape']}. "
                 f"Dense: {base_total / plots.MB:,.2f} MB.")
c[3].metric("Memory saving", f"{100 * (1 - facto_total / base_total):.1f} %" if base_total else "—", border=True,
            help="1 − Facto / dense stored bytes for this batch.")

chart = dict(theme=None, config={"displaylogo": False})
st.plotly_chart(plots.layer_bytes_bars(result["layer_bytes"], result["types"],
                                       title=f"Stored for backward per layer, one batch of {result['batch']}"),
                key="layers_bytes_chart", **chart)
left, right = st.columns([3, 2])
with left:
    st.plotly_chart(plots.params_bars(report), key="layers_params_chart", **chart)
with right:
    st.subheader("Stored bytes per layer")
    layers = list(dict.fromkeys([*result["layer_bytes"]["baseline"], *result["layer_bytes"]["facto"]]))
    table = pd.DataFrame({
        "layer": layers,
        "type (Facto)": [result["facto_types"].get(n, result["types"].get(n, "")) for n in layers],
        "dense MB": [result["layer_bytes"]["baseline"].get(n, 0) / plots.MB for n in layers],
        "Facto MB": [result["layer_bytes"]["facto"].get(n, 0) / plots.MB for n in layers],
    })
    st.dataframe(table, hide_index=True, height=380, column_config={
        "dense MB": st.column_config.NumberColumn(format="%.3f"),
        "Facto MB": st.column_config.NumberColumn(format="%.3f")})

st.subheader("Factorization report")
frame = pd.DataFrame(report)
frame["weight_shape"] = frame["weight_shape"].map(lambda v: "×".join(map(str, v)))
frame["ranks"] = frame["ranks"].map(lambda r: "" if r is None else f"{r[0]}, {r[1]}")
st.dataframe(frame[["name", "kind", "layer_type", "method", "weight_shape", "ranks", "requested", "params_before",
                    "params_after", "trainable_params", "rel_error", "update", "reason"]],
             hide_index=True, column_config={
                 "rel_error": st.column_config.NumberColumn("reconstruction error", format="%.3f",
                                                            help="‖W − W_factorized‖ / ‖W‖"),
                 "reason": st.column_config.TextColumn("note", width="large")})
st.caption("The reconstruction error is large on freshly initialised weights (they are noise-like); "
           "a warm start (main page) trains the dense model first, then factorizes it.")
