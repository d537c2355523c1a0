"""How it works: what Facto does inside one conv layer, measured on one batch (nothing is trained).

Layout only: the numbers come from facto.memory.explain (and facto.memory.analysis for the compressed map),
the figures from facto.plots.
"""
from __future__ import annotations

import streamlit as st

import ui
from facto import plots
from facto.config import SETTINGS, RunConfig, count
from facto.engine.inspect_weights import FRESH_NOTE, ChosenWeights, WeightsInspection, choose_weights, inspect_weights
from facto.memory.explain import GLOSSARY, PAPER, conv_layers, explain_layer, layer_input, rank_curve

ui.page("Facto · how it works")
P = "how_"
RANKS = ["0.0625", "0.125", "0.25", "0.5", "0.75", "1.0"]


@st.cache_data(show_spinner=False, max_entries=16)
def layers_of(model: str) -> list[tuple[str, str]]:
    from facto.engine.build import dense_model
    from facto.engine.data import dataset_info

    info = dataset_info("digits")
    return conv_layers(dense_model(RunConfig(model=model), info.num_classes, info.in_channels))


@st.cache_data(show_spinner="Factorizing the layer and measuring one batch…", max_entries=32)
def story(config: RunConfig, layer: str, real_data: bool, max_batch: int):
    return explain_layer(config, layer, batch(config, real_data), max_batch)


@st.cache_data(show_spinner=False, max_entries=8)
def batch(config: RunConfig, real_data: bool):
    if not real_data:
        return None
    from facto.memory.analysis import sample_batch

    return sample_batch(config, real_data=True)


@st.cache_data(show_spinner="Trying every rank…", max_entries=16)
def curve(config: RunConfig, layer: str, real_data: bool, max_batch: int):
    return rank_curve(config, layer, RANKS, batch(config, real_data), max_batch)


@st.cache_data(show_spinner=False, max_entries=16)
def feature_map(config: RunConfig, layer: str, real_data: bool):
    from facto.engine.data import dataset_info
    from facto.engine.starting import starting_model

    info = dataset_info(config.dataset)
    x = batch(config, real_data)
    if x is None:
        import torch

        g = torch.Generator().manual_seed(config.seed)
        x = torch.randn(config.batch_size, info.in_channels, info.image_size, info.image_size, generator=g)
    return layer_input(starting_model(config, info.num_classes, info.in_channels)[0], layer, x)


@st.cache_data(show_spinner="Loading the weights, factorizing them and testing both models…", max_entries=12)
def spectra(config: RunConfig, init: str) -> WeightsInspection:
    weights = (ChosenWeights("random", f"fresh weights (seed {config.seed})", False) if init == "random"
               else choose_weights(config.replace(init=init)))
    return inspect_weights(config, weights=weights)


def weights_choice(model: str) -> str:
    """The sidebar's Weights: the latest finished run of `model` (first, when there is one) or fresh
    weights; the chosen `init`."""
    latest = choose_weights(RunConfig(model=model))
    options = {"fresh weights": "random"}
    if latest.trained:
        options = {f"run {latest.run_id} (latest finished {model})": latest.init, **options}
    if st.session_state.get(P + "weights") not in options:
        st.session_state.pop(P + "weights", None)
    choice = st.radio("Weights", list(options), key=P + "weights",
                      help="The baseline the latest finished run of this model on digits trained and kept, or "
                           "fresh weights drawn from the seed. Everything on this page uses them.")
    return options[choice]


def spectrum_section(config: RunConfig, layer: str) -> None:
    """The layer's spectrum for the chosen weights (`config.init`), the energy its rank keeps, and the
    model's accuracy before training, dense vs factorized."""
    st.subheader("Why a rank loses little on trained weights")
    try:
        w = spectra(config.replace(init="random"), config.init)
    except ValueError as exc:
        st.error(f"Can't test these weights: {exc}", icon=":material/error:")
        return
    chosen = [x for x in w.spectra if x.name == layer]
    fresh = [x for x in w.fresh_spectra if x.name == layer] if w.weights.trained else []
    c = st.columns(5)
    if chosen:
        c[0].metric("Energy kept by this layer", f"{100 * chosen[0].energy_kept:.1f} %", **ui.CARD,
                    help=f"Share of the squared singular values the ranks {chosen[0].ranks} keep "
                         f"(output channels {100 * chosen[0].out.energy_kept:.1f} %, input channels "
                         f"{100 * chosen[0].inp.energy_kept:.1f} %)."
                         + (f" Fresh weights: {100 * fresh[0].energy_kept:.1f} %." if fresh else ""))
    ui.accuracy_cards(c[1:], w, config.dataset)
    if not w.weights.trained:
        st.info(FRESH_NOTE, icon=":material/info:")
    if chosen:
        st.plotly_chart(plots.spectrum_figure(chosen, fresh, columns=1,
                                              label="trained" if w.weights.trained else "fresh",
                                              title=f"{layer}: singular values of both unfoldings, rank marked"),
                        key="how_spectrum_chart", **ui.CHART)
    st.caption(f"Weights: {w.weights.source}. Layers page: every layer's spectrum.")


ui.init_widgets(P, ["model", "update", "bits", "recompute", "block"])
st.session_state.setdefault(P + "rank", "0.5")
st.session_state.setdefault(P + "batch_size", 32)
st.session_state.setdefault(P + "data", "digits images")
with st.sidebar:
    st.header("One layer")
    ui.setting_widget("model", P + "model")
    init = weights_choice(st.session_state[P + "model"])
    options = layers_of(st.session_state[P + "model"])
    names = [n for n, _ in options]
    labels = dict(options)
    if not names:
        st.error("This model has no conv that Facto factorizes with Tucker-2 (groups 1, kernel > 1x1).")
        st.stop()
    if st.session_state.get(P + "layer") not in names:
        st.session_state[P + "layer"] = names[min(len(names) - 1, len(names) // 3)]
    st.selectbox("Layer", names, key=P + "layer", format_func=labels.get,
                 help="A conv layer of the model (input → output channels, kernel, stride).")
    st.select_slider("Rank", RANKS, key=P + "rank", help=SETTINGS["rank"].help)
    ui.setting_widget("update", P + "update", options=["first", "core", "last", "all"])
    ui.setting_widget("bits", P + "bits")
    ui.setting_widget("recompute", P + "recompute")
    ui.setting_widget("batch_size", P + "batch_size")
    st.radio("Input", ["digits images", "random noise"], key=P + "data", horizontal=True,
             help="Real handwritten digits through the model up to this layer, or N(0, 1) noise.")

s = st.session_state
st.title("How it works")
st.caption("Facto inside one conv layer of the chosen weights (a finished run's trained ones, or fresh): the "
           "dense conv and its three factors, which factor trains, and what each keeps for backward, measured "
           "on one batch. Nothing is trained.")
try:
    config = ui.config_from_widgets(P, ["model", "update", "bits", "recompute", "block"]).replace(
        rank=s[P + "rank"], batch_size=int(s[P + "batch_size"]), init=init)
except ValueError as exc:
    st.error(str(exc), icon=":material/error:")
    st.stop()
real = s[P + "data"] == "digits images"
layer = s[P + "layer"]
max_batch = ui.page_limits().max_batch
try:
    result = story(config, layer, real, max_batch)  # first: a batch above the server's limit stops the page here
except ValueError as exc:
    st.error(f"Can't explain this layer: {exc}", icon=":material/error:")
    st.stop()

dense_total, facto_total = result.total("dense"), result.total("facto")
c = st.columns(4)
c[0].metric("Dense layer keeps", f"{dense_total / plots.MB:,.3f} MB", **ui.CARD,
            help="The conv's input, BatchNorm's input and the ReLU output, fp32.")
c[1].metric("Facto keeps", f"{facto_total / plots.MB:,.3f} MB", **ui.CARD,
            delta=f"{dense_total / facto_total:.1f}× less" if facto_total else None, delta_arrow="off",
            help="The trained factor's input (compressed), the 1-bit ReLU mask, BatchNorm statistics"
                 + ("" if result.recompute else " and BatchNorm's input (compressed)") + ".")
c[2].metric("Recompute removes", f"{result.removed_by_recompute / plots.MB:,.3f} MB", **ui.CARD,
            help="BatchNorm's input, recomputed in backward from the factor input instead "
                 "of being kept (switch 'Recompute BatchNorm inputs' off to see it kept).")
c[3].metric("Weights", f"{result.params_facto:,}", **ui.CARD,
            delta=f"{result.params_facto - result.params_dense:+,} vs dense", delta_color="inverse",
            help=f"Reconstruction error of the factorized weight: {result.rel_error:.3f} "
                 "(large on fresh, noise-like weights; trained weights keep more of their energy at a rank).")

st.plotly_chart(plots.layer_stages_figure(result), key="how_stages_chart", **ui.CHART)
left, right = st.columns(2)
left.plotly_chart(plots.kept_bytes_bars(result), key="how_kept_chart", **ui.CHART)
right.plotly_chart(plots.rank_curve_figure(curve(config, layer, real, max_batch), selected=s[P + "rank"]),
                   key="how_rank_chart", **ui.CHART)

spectrum_section(config, layer)

st.subheader("The compressed map, next to the original")
trained_input = next((k for k in result.kept if k.source == "facto" and k.what.startswith("input of")), None)
fmap = feature_map(config, layer, real)
if config.bits is None or config.bits == 16:
    st.info("Pick 1..8 bits to see a map compressed block by block (none and 16 bits keep it almost exact).")
else:
    from facto.memory.analysis import compression_sample

    sample = compression_sample(fmap, config.bits, config.block, True)
    st.caption(f"The layer's input feature map (the first factor's input, {'×'.join(map(str, fmap.shape[1:]))} "
               f"per image) at {count(config.bits, 'bit')} in blocks of {config.block}: relative error "
               f"{100 * sample['rel_error']:.2f} %, {sample['raw_bytes'] / sample['bytes']:.1f}× smaller. "
               + (f"What Facto keeps here is the {result.update} factor's input "
                  f"({'×'.join(map(str, trained_input.shape[1:]))}), compressed the same way."
                  if trained_input else ""))
    st.plotly_chart(plots.feature_map_images(fmap[0], sample["compressed"][0], max_channels=8,
                                             compressed_name=f"after {config.bits}-bit compression",
                                             title=f"{layer}: input map of image 0, first 8 channels"),
                    key="how_map", **ui.CHART)

with st.expander("Glossary: every term the app uses", expanded=False):
    for term, text in GLOSSARY.items():
        st.markdown(f"**{term}** — {text}")
st.caption(f"The method: {PAPER[0]}. [Read the paper]({PAPER[1]}). Beyond the paper, Facto recomputes "
           "BatchNorm inputs, keeps 1-bit ReLU masks and index-only max-pools.")
