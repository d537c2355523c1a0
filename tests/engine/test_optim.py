"""The engine's optimizers: torch.optim's updates exactly, without importing torch._dynamo."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from facto.config import RunConfig
from facto.engine.optim import OPTIMIZER_SPECS, make_optimizer

TORCH_OPTIMIZERS = {  # the engine's names -> torch.optim with the engine's settings
    "adam": lambda p, lr, wd: torch.optim.Adam(p, lr=lr, weight_decay=wd),
    "adamw": lambda p, lr, wd: torch.optim.AdamW(p, lr=lr, weight_decay=wd),
    "sgd": lambda p, lr, wd: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True),
}


def _trajectory(make, steps: int = 6) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    opt = make(list(model.parameters()), 0.05, 1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=data), torch.randint(0, 3, (8,), generator=data)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(OPTIMIZER_SPECS))
def test_the_engine_optimizers_move_weights_as_torch_optim_does(name):
    """Bit for bit, with a schedule; torch.optim's own class goes first so that its step carries the
    profiler hook torch.optim adds on first use (the engine's class must step past both wrappers)."""
    expected = _trajectory(TORCH_OPTIMIZERS[name])
    got = _trajectory(OPTIMIZER_SPECS[name].make)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert not all(torch.equal(a, b) for a, b in zip(got, _trajectory(lambda p, lr, wd: torch.optim.SGD(p, lr=0.0))))


def test_the_engine_optimizers_keep_torch_optims_hooks_and_grad_mode():
    model = nn.Linear(3, 2)
    opt, _ = make_optimizer(RunConfig(optimizer="adam"), model, 4)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(torch.is_grad_enabled()))
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    assert seen == [True] and torch.is_grad_enabled()  # the hook ran; grad mode restored after the step
    assert len(opt.state) == 2 and all(int(s["step"]) == 1 for s in opt.state.values())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


SCRIPT = """
import sys, torch
from torch import nn
from facto.config import RunConfig
from facto.engine.optim import make_optimizer
for name in ("adam", "adamw", "sgd"):
    model = nn.Linear(3, 2)
    opt, sched = make_optimizer(RunConfig(optimizer=name), model, 4)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
        sched.step()
print("torch._dynamo" in sys.modules)
"""


def test_a_process_training_with_the_engine_optimizers_never_imports_dynamo():
    """torch.optim's compile guards import torch._dynamo (about 150 MB resident); the engine's don't."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False"]
    plain = SCRIPT.replace("make_optimizer(RunConfig(optimizer=name), model, 4)",
                           "(torch.optim.SGD(model.parameters(), lr=0.1), None)").replace("sched.step()", "")
    out = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["True"]  # the check can fail: torch.optim's own does import it
