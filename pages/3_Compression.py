"""Compression: one layer's feature map before and after b-bit block-wise compression.

Layout only: the feature maps and numbers come from facto (facto.compress via facto.plots
helpers), the figures from facto.plots.
"""
from __future__ import annotations

import streamlit as st
import torch

from facto import plots
from facto.data import list_datasets, load_data
from facto.models import create_model, list_models
from facto.train import RunConfig

st.set_page_config(page_title="Facto · compression", page_icon=":material/compress:", layout="wide")
DEFAULTS = RunConfig()
KEEP = dict(persist_state="session")


@st.cache_resource(show_spinner="Running one batch through the model…", max_entries=4)
def feature_maps(model: str, dataset: str, data_dir: str, batch_size: int, batch: int, seed: int) -> dict:
    """Every 4-D feature map of one test batch through a freshly initialised model (read only)."""
    data = load_data(dataset, data_dir, batch_size, seed=seed)
    for i, (x, _) in enumerate(data.test_loader):
        if i == batch:
            break
    torch.manual_seed(seed)
    net = create_model(model, data.info.num_classes, data.info.in_channels)
    types = {n: type(m).__name__ for n, m in net.named_modules() if n}
    return dict(maps=plots.feature_maps(net, x), types=types, batches=len(data.test_loader))


with st.sidebar:
    st.header("Feature map")
    models, datasets = list_models(), list_datasets()
    st.selectbox("Model", models, index=models.index(DEFAULTS.model), key="cmp_model", **KEEP,
                 help="A freshly initialised model (seeded): the maps are what the first steps store.")
    st.selectbox("Dataset", datasets, index=datasets.index(DEFAULTS.dataset), key="cmp_dataset", **KEEP,
                 help="Where the batch comes from (test split, not shuffled).")
    st.text_input("Data folder", value=DEFAULTS.data_dir, key="cmp_data_dir", **KEEP,
                  help="Where torchvision datasets are read from (digits needs none).")
    a, b = st.columns(2)
    a.number_input("Batch", min_value=0, max_value=10_000, value=0, step=1, key="cmp_batch", **KEEP,
                   help="Which test batch to run.")
    b.select_slider("Batch size", [8, 16, 32, 64, 128], value=32, key="cmp_batch_size", **KEEP,
                    help="Images per batch. Every image of the batch is compressed; one is shown.")

st.title("Compression")
st.caption("What Facto does to a stored feature map: split it into blocks of neighbouring values, keep each "
           "block's min and step, and b-bit codes. Left: the map; middle: what backward gets back; right: "
           "the difference.")

s = st.session_state
try:
    loaded = feature_maps(s["cmp_model"], s["cmp_dataset"], str(s["cmp_data_dir"]).strip(),
                          int(s["cmp_batch_size"]), int(s["cmp_batch"]), 0)
except ValueError as exc:  # dataset not on disk, unknown model, ...
    st.error(f"Can't load this batch: {exc}", icon=":material/error:")
    st.stop()
maps, types = loaded["maps"], loaded["types"]
if int(s["cmp_batch"]) >= loaded["batches"]:
    st.warning(f"The test set has {loaded['batches']} batches of this size; showing the last one.")

names = list(maps)
with st.sidebar:
    st.selectbox("Layer", names, index=min(1, len(names) - 1), key="cmp_layer",
                 format_func=lambda n: f"{n} · {types.get(n, '')} · {tuple(maps[n].shape[1:])}",
                 help="The output of this layer is the feature map shown (channels × height × width).")
    x = maps.get(s["cmp_layer"], maps[names[0]])
    st.slider("Image in the batch", 0, x.shape[0] - 1, 0, key="cmp_image", **KEEP)
    st.slider("Bits per value", 1, 8, 4, key="cmp_bits", **KEEP,
              help="Fewer bits: fewer bytes, larger error.")
    st.select_slider("Block size", [16, 32, 64, 128, 256, 512, 1024], value=DEFAULTS.block, key="cmp_block",
                     **KEEP, help="Values per block (each block stores its own min and step). Smaller blocks "
                                  "follow local ranges: less error, more metadata.")
    st.checkbox("Stochastic rounding", value=True, key="cmp_stochastic", **KEEP,
                help="Round up or down at random in proportion: unbiased on average (what training uses), "
                     "a little more error per value than rounding to nearest.")
    st.slider("Channels shown", 1, min(64, x.shape[1]), min(16, x.shape[1]), key="cmp_channels", **KEEP)

bits, block, stochastic = int(s["cmp_bits"]), int(s["cmp_block"]), bool(s["cmp_stochastic"])
image = min(int(s["cmp_image"]), x.shape[0] - 1)
sample = plots.compression_sample(x, bits, block, stochastic)
c = st.columns(4)
c[0].metric("Feature map", "×".join(map(str, x.shape[1:])), border=True,
            help=f"channels × height × width, for each of the {x.shape[0]} images of the batch")
c[1].metric("Stored", f"{sample['bytes'] / 1e3:,.1f} KB", border=True,
            delta=f"{sample['raw_bytes'] / sample['bytes']:.1f}× less than fp32", delta_arrow="off",
            help=f"fp32: {sample['raw_bytes'] / 1e3:,.1f} KB. Includes each block's min and step.")
c[2].metric("Relative error", f"{100 * sample['rel_error']:.2f} %", border=True,
            help="‖compressed − original‖ / ‖original‖ over the whole batch.")
c[3].metric("Largest error", f"{sample['max_error']:.4f}", border=True,
            help=f"Mean absolute error {sample['mean_abs_error']:.4f}. At most one quantization step per value.")

chart = dict(theme=None, config={"displaylogo": False})
st.plotly_chart(plots.feature_map_images(
    x[image], sample["compressed"][image], max_channels=int(s["cmp_channels"]),
    compressed_name=f"Compressed ({bits}-bit, blocks of {block})",
    title=f"{s['cmp_layer']} ({types.get(s['cmp_layer'], '')}), image {image}: "
          f"first {min(int(s['cmp_channels']), x.shape[1])} channels"), key="cmp_images", **chart)
left, right = st.columns(2)
left.plotly_chart(plots.error_histogram(sample["error"], title=f"Error distribution at {bits} bits (whole batch)"),
                  key="cmp_hist", **chart)
right.plotly_chart(plots.bits_curves(plots.bits_table(x, block, stochastic), selected=bits,
                                     title="Error and size vs bits (whole batch)"), key="cmp_bits_chart", **chart)
st.caption("In training, ReLU outputs are kept as exact 1-bit masks; this compression applies to the other "
           "stored maps (inputs of the trained factors, BatchNorm inputs, pooling inputs).")
