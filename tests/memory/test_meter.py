"""saved_activations: honest accounting (shared storages once, params excluded, address reuse)
and gradient quality of compressed training on a whole factorized ResNet."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import facto
from facto.compress.backend import reference_only
from facto.memory.audit import rss_growth, storage_walk
from facto.memory.meter import measure_activations

from ..storage import reachable_bytes


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def conv_bn_relu_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 8 * 8, 10))


def test_shared_storage_is_counted_once():
    """ReLU's output is also the next conv's input: one storage, counted once."""
    net = conv_bn_relu_net()
    x = torch.randn(4, 1, 16, 16)
    meter = measure_activations(net, x)
    act = 4 * 4 * 16 * 16  # bytes per channel of a (4, C, 16, 16) float map
    expected = (
        x.numel() * 4  # conv1 input
        + 8 * act + 8 * act  # bn1 input, relu1 output (= conv2 input, shared)
        + 16 * act + 16 * act  # bn2 input, relu2 output (= maxpool input, shared)
        + 4 * 16 * 8 * 8 * 8  # maxpool int64 indices, kept exact (dtype int64 at bits=None? narrowed)
        + 4 * 16 * 8 * 8 * 4  # linear input (view of the pool output)
    )
    bn_stats = 2 * (8 + 16) * 4
    index_record = [r for r in meter.records if r.dtype == "int64"]
    assert len(index_record) == 1
    index_bytes = index_record[0].stored_bytes
    assert index_bytes == 4 * 16 * 8 * 8 * 1  # indices < 256 fit uint8, stored losslessly
    assert meter.bytes == expected - 4 * 16 * 8 * 8 * 8 + index_bytes + bn_stats
    shapes = [r.shape for r in meter.records]
    assert shapes.count((4, 8, 16, 16)) == 2  # bn1 input and the shared relu1/conv2 tensor
    assert sum(meter.by_module.values()) == meter.bytes


def test_parameters_and_buffers_are_excluded():
    lin = nn.Linear(300, 200)
    x = torch.randn(8, 300)
    with facto.saved_activations(model=lin) as with_model:
        lin(x).sum()
    with facto.saved_activations() as without_model:
        lin(x).sum()
    assert with_model.bytes == x.numel() * 4
    assert without_model.bytes == x.numel() * 4


def _grads(model: nn.Module, run, x, y, bits):
    model.zero_grad()
    with facto.saved_activations(bits=bits, model=model, stochastic=False) as meter:
        loss = F.cross_entropy(run(x), y)
    loss.backward()
    return meter, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _restored_saved_tensors(loss: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor the graph behind `loss` saved, as backward gets it back (through unpack)."""
    seen, stack, out = set(), [loss.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_") or name == "saved_tensors":  # built-in ops, custom Functions
                value = getattr(node, name)
                out += [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, torch.Tensor)]
        stack += [n for n, _ in node.next_functions]
    return out


@pytest.mark.parametrize("build", ["masks", "facto"])
def test_channels_last_trains_under_the_meter_with_its_layout_kept(build):
    """A channels_last model trains with the gradients of the contiguous one, and what backward
    gets back is channels_last as saved (4-bit maps, max-pool indices: checked on the dense
    model; Facto's 1x1 stages run as bmm and give contiguous maps)."""
    net = conv_bn_relu_net()
    net = facto.with_relu_masks(net) if build == "masks" else facto.factorize(net, rank=0.5, skip_first_conv=False)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    _, plain = _grads(net, net, x, y, None)
    net_cl = net.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    _, relaid = _grads(net_cl, net_cl, x_cl, y, None)
    for a, b in zip(plain, relaid):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with facto.saved_activations(bits=4, model=net_cl) as meter:
        loss = F.cross_entropy(net_cl(x_cl), y)
    saved = {id(t): t for t in _restored_saved_tensors(loss)}
    maps = [t for t in saved.values() if t.dim() == 4 and t.shape[0] == 4 and t.shape[1] > 1]
    laid = [t for t in maps if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()]
    if build == "masks":  # every map of the dense model is channels_last, as it was saved
        assert len(laid) == len(maps) >= 4
        assert {r.stored_as for r in meter.records if len(r.shape) == 4} == {"Packed", "NarrowInt"}


def _has_cpp_compiler() -> bool:
    import shutil
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


@pytest.mark.slow
@pytest.mark.skipif(not _has_cpp_compiler(), reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.filterwarnings("error:facto. CPU kernels disabled")  # compiled code takes the reference quietly
def test_torch_compile_trains_under_the_meter():
    """A torch.compile'd model inside saved_activations: its backward checks the strides of what it
    saved (a 1-bit mask column, stride 8) and gets them back; gradients equal eager's."""
    torch._dynamo.reset()
    net = facto.factorize(conv_bn_relu_net(), rank=0.5, skip_first_conv=False)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    eager_meter, eager = _grads(net, net, x, y, None)
    compiled = torch.compile(net)
    meter, grads = _grads(net, compiled, x, y, None)
    assert meter.bytes > 0 and set(meter.by_module) <= set(eager_meter.by_module)
    for a, b in zip(eager, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    _, lossy = _grads(net, compiled, x, y, 4)  # and compressed, the graph compiled once
    assert all(torch.isfinite(g).all() for g in lossy)


def test_address_reuse_gets_its_own_packed_data():
    """Originals are freed once packed; a later tensor at the same address must not hit the cache."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(64, 64) / 8)

    def forward(x):
        ptrs = []
        for _ in range(16):
            x = torch.tanh(x @ w)  # tanh saves its output; matmul saves its input
            ptrs.append(x.data_ptr())
        return x.sum(), ptrs

    # 24 KiB maps and up: heap blocks the allocator hands out again. The reference's work buffers of
    # that size leave the freed maps' blocks for the next maps to reuse (the CPU kernels allocate none,
    # so the heap may hand out fresh blocks); the meter is the same for both. Whether glibc reuses a
    # block depends on the heap the process has: a few sizes are tried until one run reuses an address.
    reused = 0
    for rows in (96, 128, 160, 192, 224):
        x0 = torch.randn(rows, 64)
        loss, _ = forward(x0)
        (exact,) = torch.autograd.grad(loss, w)
        with facto.saved_activations(bits=8, model=nn.ParameterList([w])) as meter, reference_only():
            loss, ptrs = forward(x0)
        (approx,) = torch.autograd.grad(loss, w)
        assert len(meter.records) == 16 + 1  # x0 + 16 tanh outputs (each also the next matmul input: shared)
        assert cosine(approx, exact) > 0.99
        reused += len(set(ptrs)) < len(ptrs)
    assert reused, "the allocator reused no address in any of the runs: the test is void"


def test_integer_tensors_kept_losslessly_in_narrow_type():
    pool = nn.MaxPool2d(2)
    x = torch.randn(2, 3, 40, 40, requires_grad=True)
    with facto.saved_activations(bits=4) as meter:
        y = pool(x)
    (ind,) = [r for r in meter.records if r.dtype == "int64"]
    assert ind.stored_as == "NarrowInt"
    assert ind.stored_bytes == y.numel() * 2  # indices up to 1599 -> int16
    g = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, x, g)
    (want,) = torch.autograd.grad(pool(x), x, g)
    assert torch.equal(got != 0, want != 0)  # gradients routed to the exact argmax positions


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_meter_counts_what_the_stored_container_holds(bits, monkeypatch):
    """The meter's bytes are the storages the stored container really holds (walked from its fields,
    independently of the meter), and those are at most `bits` bits per value plus a block's metadata."""
    x = torch.randn(3, 5, 17, 13, requires_grad=True)
    kept = []
    real = facto.compress.compress

    def spy(*args, **kwargs):
        kept.append(real(*args, **kwargs))
        return kept[-1]

    monkeypatch.setattr("facto.memory.meter.compress", spy)
    with facto.saved_activations(bits=bits, block=64) as meter:
        torch.sin(x * 1)  # a non-leaf: without `model`, grad-requiring leaves count as parameters
    n = x.numel()
    assert len(kept) == 1 and meter.bytes == reachable_bytes(kept[0])
    if bits == 16:
        assert meter.bytes <= n * 2 + 4  # half precision, and a 0-dim shift
    else:  # codes of `bits` bits (a group of 8 values padded whole) + 2 x 16 bits per block of 64
        assert meter.bytes <= (n + 7) // 8 * bits + (n + 63) // 64 * 4
    assert meter.raw_bytes == n * 4


@pytest.mark.parametrize("bits", [0, 9, 3.5, "4"])
def test_bad_bits_rejected(bits):
    with pytest.raises(ValueError, match=str(bits)):
        with facto.saved_activations(bits=bits):
            pass


def test_bad_block_rejected():
    with pytest.raises(ValueError, match="block"):
        with facto.saved_activations(bits=4, block=0):
            pass


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="resnet20"), "model=str is not allowed"),
    (dict(generator=5), "generator=5 is not allowed"),
    (dict(stochastic="yes"), "stochastic='yes' is not allowed"),
    (dict(min_numel=-1), "min_numel=-1 is not allowed"),
], ids=["model", "generator", "stochastic", "min_numel"])
def test_arguments_of_the_wrong_kind_rejected_naming_them(kwargs, message):
    """Said when the block is entered, not as an AttributeError deep in the first forward."""
    with pytest.raises(ValueError, match=message):
        with facto.saved_activations(bits=4, **kwargs):
            pass


def test_library_entry_points_name_a_value_of_the_wrong_kind():
    with pytest.raises(ValueError, match="model=str is not allowed"):
        facto.describe("resnet20")
    with pytest.raises(ValueError, match="x=list is not allowed: use a torch.Tensor"):
        facto.compress.compress([1.0, 2.0], 4)


def _resnet_grads(model, x, y, bits=None, draws=1, seed=0):
    """Mean gradient (flattened over trainable parameters) over `draws` compressed passes."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = None
    torch.manual_seed(seed)
    for _ in range(draws):
        with facto.saved_activations(bits=bits, model=model):
            out = model(x)
        loss = F.cross_entropy(out, y)
        g = torch.cat([t.flatten() for t in torch.autograd.grad(loss, params)])
        total = g if total is None else total + g
    return total / draws


@pytest.fixture(scope="module")
def factorized_resnet():
    import torchvision

    torch.manual_seed(0)
    model = facto.factorize(torchvision.models.resnet18(num_classes=10), rank=0.5, update="core")
    model.train()
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    # BN running stats change each pass but gradients depend only on batch statistics
    exact = _resnet_grads(model, x, y)
    return model, x, y, exact


def test_8bit_gradients_of_factorized_resnet(factorized_resnet):
    model, x, y, exact = factorized_resnet
    approx = _resnet_grads(model, x, y, bits=8)
    assert cosine(approx, exact) >= 0.99


@pytest.mark.slow
def test_4bit_mean_of_stochastic_gradients_is_unbiased(factorized_resnet, capsys):
    model, x, y, exact = factorized_resnet
    mean4 = _resnet_grads(model, x, y, bits=4, draws=16)
    one4 = _resnet_grads(model, x, y, bits=4, draws=1, seed=1)
    mean2 = _resnet_grads(model, x, y, bits=2, draws=16)
    with capsys.disabled():
        print(f"\n  factorized resnet18 gradient cosine to exact: 4-bit one draw {cosine(one4, exact):.4f}, "
              f"4-bit mean of 16 {cosine(mean4, exact):.4f}, 2-bit mean of 16 {cosine(mean2, exact):.4f}")
    assert cosine(mean4, exact) >= 0.99
    # A known limit, stated in the README: at 2 bits the mean of 16 draws stays biased on this
    # model (measured 0.48): BatchNorm's backward meets a coarse saved input with statistics of
    # the exact one. If this assertion ever fails, the limit is gone: update the README.
    assert cosine(mean2, exact) < 0.9 < cosine(mean4, exact)


# ----------------------------------------------------------------------------- the meter vs what is held
# facto.memory.audit counts what autograd keeps with its own hooks (storages, once, whole) and by process
# memory; it shares no code with the meter. A container holding a view of a larger buffer (the
# 1-bit mask bug: 8x what it said) fails these.

@pytest.mark.parametrize("name", facto.list_models())
def test_meter_equals_an_independent_storage_walk(name):
    """Every registered model, factorized with recompute and 1-bit masks: the meter (bits=None)
    counts exactly the storages autograd really keeps. A container holding a view of a larger
    buffer (the 1-bit mask bug: 8x what it said) fails this."""
    torch.manual_seed(0)
    model = facto.factorize(facto.create_model(name, 10, 3), rank=0.5, update="core", recompute=True)
    x = torch.randn(8, 3, 32, 32)
    metered = measure_activations(model, x).bytes
    walked = storage_walk(model, x)
    assert metered == pytest.approx(walked, rel=0.01)


@pytest.mark.parametrize("build", ["dense", "masks"])
def test_meter_equals_storage_walk_for_dense_and_compression_only(build):
    torch.manual_seed(0)
    model = facto.create_model("resnet20", 10, 3)
    if build == "masks":
        model = facto.with_relu_masks(model)
    x = torch.randn(8, 3, 32, 32)
    assert measure_activations(model, x).bytes == pytest.approx(storage_walk(model, x), rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("variant, bits", [("dense", None), ("masks", 4), ("facto", 4)])
def test_process_memory_growth_agrees_with_the_meter(variant, bits):
    """RSS growth over one forward (graph kept) vs the meter, each variant in its own process.

    glibc returns freed blocks above MALLOC_MMAP_THRESHOLD_ to the system, so what stays
    resident after the forward is what autograd holds; the median of 2 forwards (after a first)."""
    result = rss_growth("resnet20", variant, bits, batch=128, rounds=3)
    assert result["metered"] > 5e6, "batch too small to rise above the process's noise"
    assert result["rss_growth"] == pytest.approx(result["metered"], rel=0.25), result


def test_a_forward_measured_without_backward_leaves_nothing_alive():
    """A measurement (no backward follows) must free what the forward saved: an op's output kept as
    itself would hold its own autograd node, a cycle no one frees (400 MB per call for resnet20 at
    batch 256; every Layers page and plan measures this way)."""
    import gc

    from facto.engine.models import create_model

    model = create_model("resnet20", num_classes=10, in_channels=1)
    x = torch.randn(8, 1, 32, 32)

    def alive() -> int:
        gc.collect()
        return sum(t.untyped_storage().nbytes() for t in gc.get_objects()
                   if type(t) is torch.Tensor and t.dim() == 4 and t.shape[0] == 8 and t is not x)

    before = alive()  # what other tests of this process left
    for bits in (None, 4):
        meter = measure_activations(model, x, bits)
        assert meter.raw_bytes > 1_000_000 and alive() == before, (bits, alive(), before)
