"""Fit my GPU: the largest batch that trains under a memory budget, per variant, with what fills it.

Layout only: the prediction comes from facto.memory.plan (measured per-sample bytes plus a model of
the backward transients), the check on a GPU from facto.memory.verify, the chart from facto.plots.
"""
from __future__ import annotations

import re

import pandas as pd
import streamlit as st

import ui
from facto import plots
from facto.config import OPTIMIZERS, PRECISIONS
from facto.engine.models import check_model_name
from facto.memory.budget import LimitError, check_input_size, parse_budget, parse_input_shape
from facto.memory.plan import DEFAULT_VARIANTS, chart_data, plan, table_rows
from facto.memory.verify import GPURequiredError, verify

ui.page("Facto · fit my GPU")
VARIANT_CHOICES = ["dense", "compress-2", "compress-4", "compress-8", "paper", "balanced", "max-saving"]


@st.cache_data(show_spinner="Measuring per-sample bytes of each variant (a few forward passes)…", max_entries=32)
def planned(model: str, shape: str, classes: int, budget: str, optimizer: str, precision: str, variants: tuple,
            max_input: int, max_params: int):
    return plan(model, shape, classes, budget, optimizer, precision, list(variants), device="auto",
                max_input=max_input, max_params=max_params)


def plain(error: Exception, label: str) -> str:
    """A library message in the page's words: "budget='8' has no unit: ..." -> "Memory budget '8' has no unit: ..."."""
    return re.sub(r"^[\w-]+=", f"{label} ", str(error), count=1)


def input_errors(state) -> dict[str, str]:
    """What is wrong with each input now (widget key -> plain words), checked before anything is planned."""
    errors = {}
    try:
        check_model_name(state["fit_model"].strip(), torchvision_layout=True)
    except ValueError as exc:
        errors["fit_model"] = plain(exc, "Model")
    try:
        check_input_size(parse_input_shape(state["fit_input"].strip()), limits.max_input)
    except LimitError as exc:  # the server plans in its own process: `facto plan` on your machine takes more
        errors["fit_input"] = plain(exc, "Input shape") + ". `facto plan` on your own machine has no such limit."
    except ValueError as exc:
        errors["fit_input"] = plain(exc, "Input shape")
    try:
        parse_budget(state["fit_budget"].strip())
    except ValueError as exc:
        errors["fit_budget"] = plain(exc, "Memory budget")
    if not state["fit_variants"]:
        errors["fit_variants"] = "Choose at least one variant."
    return errors


def show_error(errors: dict[str, str], key: str) -> None:
    if key in errors:
        st.error(errors[key], icon=":material/error:")


defaults = dict(fit_model="resnet20", fit_input="3x32x32", fit_classes=10, fit_budget="8GB", fit_optimizer="sgd",
                fit_precision="fp32", fit_variants=list(DEFAULT_VARIANTS))
for key, value in defaults.items():
    st.session_state.setdefault(key, value)
s = st.session_state
limits = ui.page_limits()
errors = input_errors(st.session_state)
with st.sidebar:
    st.header("Your training")
    st.text_input("Model", key="fit_model",
                  help="A registered model (simple_cnn, resnet20, resnet18, vgg11_bn, mobilenet_v2), any "
                       "torchvision classification model, or tv:NAME for torchvision's own layout (e.g. "
                       "tv:resnet18 at 224x224).")
    model_error = st.empty()
    st.text_input("Input shape", key="fit_input", help="channels x height x width of one image, e.g. 3x224x224.")
    show_error(errors, "fit_input")
    st.number_input("Classes", min_value=1, step=1, key="fit_classes")
    st.text_input("Memory budget", key="fit_budget",
                  help="What the GPU may hold for training: a number and a unit, e.g. 8GB, 24 GiB, 500MB.")
    show_error(errors, "fit_budget")
    a, b = st.columns(2)
    a.selectbox("Optimizer", list(OPTIMIZERS), key="fit_optimizer",
                help="SGD (momentum) keeps one extra value per trained weight, Adam and AdamW two.")
    b.selectbox("Precision", list(PRECISIONS), key="fit_precision",
                help="bf16/fp16 autocast: 16-bit maps (an estimate on a CPU; verify on the GPU).")
    st.multiselect("Variants", VARIANT_CHOICES, key="fit_variants",
                   help="dense fp32; compression only at b bits; Facto presets (paper, balanced, max-saving).")
    show_error(errors, "fit_variants")

st.title("Fit my GPU")
st.caption("Before you rent a GPU: the largest batch that trains in your budget, for the dense model, compression "
           "only and Facto — with what fills the memory at that batch.")
result = None
if not errors:
    try:
        result = planned(s["fit_model"].strip(), s["fit_input"].strip(), int(s["fit_classes"]),
                         s["fit_budget"].strip(), s["fit_optimizer"], s["fit_precision"], tuple(s["fit_variants"]),
                         limits.max_input, limits.max_params)
    except LimitError as exc:  # the model is above the server's limit (the input was checked above)
        errors["fit_model"] = plain(exc, "Model") + ". `facto plan` on your own machine has no such limit."
    except ValueError as exc:
        st.error(f"Can't plan this: {exc}", icon=":material/error:")
        st.stop()
if "fit_model" in errors:
    with model_error:
        show_error(errors, "fit_model")
if result is None:
    st.info("Fix the input marked in the sidebar to see the plan.", icon=":material/arrow_back:")
    st.stop()

rows = result.rows
dense = next((r for r in rows if r.variant == "dense"), None)
size = f"{result.budget / 1e9:g} GB" if result.budget >= 1e9 else f"{result.budget / plots.MB:,.0f} MB"
st.subheader(f"Largest batch in {size}", anchor=False)
PER_LINE = 5  # metric cards per line: every variant gets one
for i, row in enumerate(rows):
    if i % PER_LINE == 0:
        cols = st.columns(min(len(rows) - i, PER_LINE))
    col = cols[i % PER_LINE]
    delta = f"{row.max_batch / dense.max_batch:.1f}× dense" if dense and dense.max_batch and row is not dense else None
    col.metric(row.variant, f"{row.max_batch:,}", delta=delta, delta_arrow="off", **ui.CARD,
               help=f"{row.label}: the largest batch in the budget; {row.per_sample / plots.MB:.2f} MB more per "
                    "extra image.")
st.plotly_chart(plots.plan_bars(chart_data(result)), key="fit_chart", **ui.CHART)
table = pd.DataFrame(table_rows(result)).rename(columns=lambda c: c.replace(" MB", "").replace("optimizer state",
                                                                                              "optimizer"))
table["variant"] = [r.variant for r in rows]  # the long names below the table: it fits the page
st.caption("MB at each variant's largest batch (MB = 10^6 bytes); stored = activations kept for backward.")
st.dataframe(table.rename(columns={"per sample": "MB per image", "activations": "stored"}), hide_index=True,
             width="stretch", column_config={"max batch": st.column_config.NumberColumn(format="localized")})
st.caption(" · ".join(f"**{r.variant}**: {r.label}" for r in rows))
for note in result.notes:
    st.info(note, icon=":material/info:")
st.caption(f"How: stored bytes measured by Facto's meter on {result.device} at batches {result.probes[0]} and "
           f"{result.probes[1]} (a per-sample slope plus a constant); backward transients (restored maps, "
           "recomputed BatchNorm inputs, gradients) from a model checked against the allocator on CPU; "
           f"weights, gradients and optimizer state counted; {result.reserve / plots.MB:,.0f} MB kept back for the "
           "allocator and cuDNN. `facto plan` gives the same table on the command line.")

import torch  # noqa: E402

if torch.cuda.is_available():
    if st.button("Verify on this GPU", icon=":material/fact_check:",
                 help="Train 2 real steps per try under the budget and search the real largest batch."):
        try:
            checks = verify(result)
        except (GPURequiredError, ValueError) as exc:
            st.error(str(exc))
        else:
            st.dataframe(pd.DataFrame([c.to_dict() for c in checks]), hide_index=True)
else:
    st.caption("Verify (real training steps under the budget) needs a CUDA GPU: `facto plan ... --verify` there.")
