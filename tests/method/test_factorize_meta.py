"""facto.factorize on a model whose weights have no values (the meta device): a ValueError naming it."""
import pytest
from torch import nn

import facto


def test_factorize_refuses_a_model_on_the_meta_device():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 3)).to("meta")
    with pytest.raises(ValueError, match="model on device 'meta' is not allowed: parameter '0.weight'"):
        facto.factorize(model, skip_first_conv=False)
    model = model.to_empty(device="cpu")  # storage without values: initialise it, then it factorizes
    for layer in model:
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    assert facto.factorize(model, skip_first_conv=False) is not None
