"""Facto: memory-efficient CNN training (Facto-CNN, ACML 2023) you can see and play with.

The public API, re-exported; nothing is defined here.
"""
from . import compress
from .activations import ActivationMeter, measure_activations, saved_activations
from .factorize import (LayerReport, describe, factorize, format_report, parse_rank,
                        with_relu_masks)
from .layers import FactoConv2d, FactoLinear, MaskReLU

__all__ = [
    "ActivationMeter", "FactoConv2d", "FactoLinear", "LayerReport", "MaskReLU", "compress",
    "describe", "factorize", "format_report", "measure_activations", "parse_rank",
    "saved_activations", "with_relu_masks",
]
