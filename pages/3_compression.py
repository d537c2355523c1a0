"""Compression: one layer's feature map before and after b-bit block-wise compression.

Layout only: the model is built by `facto.engine.build.dense_model` (seeded from the config, as a
run builds it), the feature maps and the numbers come from facto.memory.analysis (which compresses
with facto.compress, as training does), the figures from facto.plots.
"""
from __future__ import annotations

import streamlit as st

import ui
from facto import plots
from facto.config import SETTINGS, RunConfig, count
from facto.memory.analysis import bits_table, compression_sample, feature_maps

ui.page("Facto · compression")

P = "cmp_"
FIELDS = ["model", "dataset", "data_dir", "batch_size", "seed", "block"]
BITS = [b for b in SETTINGS["bits"].allowed() if b is not None and b <= 8]  # block-wise quantization widths


@st.cache_resource(show_spinner="Running one batch through the model…", max_entries=4)
def load_maps(config: dict, batch: int) -> dict:
    """Every 4-D feature map of one test batch through the config's freshly built model (read only)."""
    from facto.engine.build import dense_model
    from facto.engine.data import load_data

    cfg = RunConfig.from_dict(config)
    data = load_data(cfg.dataset, cfg.data_dir, cfg.batch_size, seed=cfg.seed)
    for i, (x, _) in enumerate(data.test_loader):
        if i == batch:
            break
    net = dense_model(cfg, data.info.num_classes, data.info.in_channels)
    types = {n: type(m).__name__ for n, m in net.named_modules() if n}
    return dict(maps=feature_maps(net, x), types=types, batches=len(data.test_loader))


def init_state() -> None:
    ui.init_widgets(P, FIELDS)
    s = st.session_state
    if ui.room().enabled:
        s[P + "data_dir"] = ui.room().data_dir
    s.setdefault(P + "batch", 0)
    s.setdefault(P + "bits", RunConfig().bits if RunConfig().bits in BITS else BITS[-1])
    s.setdefault(P + "stochastic", True)


def sidebar_data() -> None:
    with st.sidebar:
        st.header("Feature map")
        ui.setting_widget("model", P + "model", options=ui.allowed_models(),
                          help_extra="Freshly initialised from the seed: the maps are what the first steps store.")
        ui.setting_widget("dataset", P + "dataset", help_extra="The batch comes from its test split, not shuffled.")
        ui.setting_widget("data_dir", P + "data_dir", disabled=ui.room().enabled)
        a, b = st.columns(2)
        a.number_input("Test batch", min_value=0, max_value=10_000, step=1, key=P + "batch", persist_state="session",
                       help="Which batch of the test set goes through the model.")
        ui.setting_widget("seed", P + "seed", b)
        ui.setting_widget("batch_size", P + "batch_size",
                          help_extra="Every image of the batch is compressed; one is shown.")


def sidebar_map(maps: dict, types: dict) -> None:
    names = list(maps)
    s = st.session_state
    if s.get(P + "layer") not in names:
        s[P + "layer"] = names[min(1, len(names) - 1)]
    with st.sidebar:
        st.selectbox("Layer", names, key=P + "layer",
                     format_func=lambda n: f"{n} · {types.get(n, '')} · {'×'.join(map(str, maps[n].shape[1:]))}",
                     help="The output of this layer is the feature map shown (channels × height × width).")
        x = maps[s[P + "layer"]]
        s[P + "image"] = min(s.get(P + "image", 0), x.shape[0] - 1)
        s[P + "channels"] = min(s.get(P + "channels", 16), x.shape[1])
        st.slider("Image in the batch", 0, x.shape[0] - 1, key=P + "image")
        st.select_slider(SETTINGS["bits"].label, BITS, key=P + "bits", format_func=SETTINGS["bits"].format,
                         help="Fewer bits: fewer bytes, larger error. " + SETTINGS["bits"].help)
        ui.setting_widget("block", P + "block")
        st.checkbox("Stochastic rounding", key=P + "stochastic", persist_state="session",
                    help="Round up or down at random in proportion: unbiased on average (what training uses), "
                         "a little more error per value than rounding to nearest.")
        st.slider("Channels shown", 1, max(1, min(64, x.shape[1])), key=P + "channels",
                  disabled=x.shape[1] == 1)
    ui.sidebar_footer()


# ----------------------------------------------------------------------------- page

init_state()
sidebar_data()
st.title("Compression")
st.caption("What Facto does to a stored feature map: split it into blocks of neighbouring values, keep each block's "
           "min and step, and b-bit codes. Left: the map; middle: what backward gets back; right: the difference.")
s = st.session_state
errors = ui.field_errors(P, FIELDS)
if errors:
    for error in errors:
        st.error(f"Can't load this batch: {error}", icon=":material/error:")
    st.stop()
config = ui.config_from_widgets(P, FIELDS)
try:
    loaded = load_maps(config.to_dict(), int(s[P + "batch"]))
except ValueError as exc:  # dataset not on disk, unknown model, ...
    st.error(f"Can't load this batch: {exc}", icon=":material/error:")
    st.stop()
maps, types = loaded["maps"], loaded["types"]
if int(s[P + "batch"]) >= loaded["batches"]:
    st.warning(f"The test set has {loaded['batches']} batches of {config.batch_size} images; showing the last one.",
               icon=":material/warning:")
sidebar_map(maps, types)

layer = s[P + "layer"]
x = maps[layer]
bits, block, stochastic = int(s[P + "bits"]), config.block, bool(s[P + "stochastic"])
image, channels = int(s[P + "image"]), int(s[P + "channels"])
sample = compression_sample(x, bits, block, stochastic)
c = st.columns(4)
c[0].metric("Feature map", "×".join(map(str, x.shape[1:])), **ui.CARD,
            help=f"channels × height × width, for each of the {x.shape[0]} images of the batch")
c[1].metric("Stored", f"{sample['bytes'] / 1e3:,.1f} KB", **ui.CARD,
            delta=f"{sample['raw_bytes'] / sample['bytes']:.1f}× less than fp32", delta_arrow="off",
            help=f"fp32: {sample['raw_bytes'] / 1e3:,.1f} KB. Includes each block's min and step.")
c[2].metric("Relative error", f"{100 * sample['rel_error']:.2f} %", **ui.CARD,
            help="‖compressed − original‖ / ‖original‖ over the whole batch.")
c[3].metric("Largest error", f"{sample['max_error']:.4f}", **ui.CARD,
            help=f"Mean absolute error {sample['mean_abs_error']:.4f}. At most one quantization step per value.")

st.plotly_chart(plots.feature_map_images(
    x[image], sample["compressed"][image], max_channels=channels,
    compressed_name=f"Compressed ({SETTINGS['bits'].format(bits)}, blocks of {block})",
    title=f"{layer} ({types.get(layer, '')}), image {image}: first {min(channels, x.shape[1])} channels"),
    key="cmp_images", **ui.CHART)
left, right = st.columns(2)
left.plotly_chart(plots.error_histogram(sample["error"],
                                        title=f"Error distribution at {count(bits, 'bit')} (whole batch)"),
                  key="cmp_hist", **ui.CHART)
right.plotly_chart(plots.bits_curves(bits_table(x, block, stochastic, bits=BITS), selected=bits,
                                     title="Error and size vs bits (whole batch)"), key="cmp_bits_chart", **ui.CHART)
st.caption("In training, ReLU outputs are kept as exact 1-bit masks; this compression applies to the other stored "
           "maps (inputs of the trained factors, BatchNorm inputs, pooling inputs).")
