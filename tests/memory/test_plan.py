"""Fit my GPU (facto.memory.plan): parsing, the batch search, the step-peak model (facto.memory.step_peak) against the
CPU profiler, the CLI.

CPU only and small (simple_cnn / resnet20 at 32x32): the whole file runs in well under a minute.
"""
import json

import pytest
import torch

import facto
from facto.cli import main
from facto.memory import budget as fb
from facto.memory import plan as fp
from facto.memory import verify as fv
from facto.memory import step_peak as sp

# ----------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("text, expected", [
    ("8GB", 8 * 10**9), ("8 GiB", 8 * 2**30), ("500MB", 500 * 10**6), ("4g", 4 * 2**30),
    ("1.5 GB", 1_500_000_000), ("2048B", 2048), ("64 KiB", 65536), (10**9, 10**9),
])
def test_parse_budget(text, expected):
    assert fb.parse_budget(text) == expected


@pytest.mark.parametrize("text", ["8 GBs", "lots", "", "8 G B", "inf GB", None, True])
def test_parse_budget_errors_name_the_value_and_the_units(text):
    with pytest.raises(ValueError) as err:
        fb.parse_budget(text)
    message = str(err.value)
    assert f"budget={text!r}" in message and "GiB" in message and "8GB" in message


@pytest.mark.parametrize("text", ["8", "2048", " 8 ", "1.5", "0"])
def test_a_budget_without_a_unit_is_refused_not_read_as_bytes(text):
    with pytest.raises(ValueError) as err:
        fb.parse_budget(text)
    assert str(err.value) == f"budget={text!r} has no unit: write it like 8GB, 512MiB or 1.5GiB"


@pytest.mark.parametrize("text", ["0GB", "0 MiB", "-1GB", "-0.5g", 0, -3])
def test_a_budget_of_zero_or_less_is_refused_in_plain_words(text):
    with pytest.raises(ValueError) as err:
        fb.parse_budget(text)
    message = str(err.value)
    assert f"budget={text!r}" in message and "the budget must be above zero" in message
    assert "a number and a unit" not in message


def test_a_budget_under_one_byte_says_so():
    with pytest.raises(ValueError, match=r"budget='0.0001B' is not allowed: the budget must be at least 1 byte"):
        fb.parse_budget("0.0001B")


@pytest.mark.parametrize("text, expected", [
    ("3x224x224", (3, 224, 224)), ("1 x 32 x 32", (1, 32, 32)), ("3,32,32", (3, 32, 32)), ((3, 64, 48), (3, 64, 48)),
])
def test_parse_input_shape(text, expected):
    assert fb.parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["3x224", "3x224x224x1", "0x32x32", "ax32x32", "3x-2x32", (3, 32), "", None,
                                  "²x32x32", "３x32x32", "3x١٢x32"])
def test_parse_input_shape_errors(text):
    with pytest.raises(ValueError, match=r"input=.*C x H x W"):
        fb.parse_input_shape(text)


def test_variants_parse_and_bad_names():
    assert fp.parse_variants("dense, compress-2,balanced,dense") == ["dense", "compress-2", "balanced"]
    most = fp.variant_spec("max-saving")
    assert (most.method, most.bits, most.config.update, most.config.recompute) == ("facto", 2, "core", True)
    assert fp.variant_spec("compress-16").bits == 16 and fp.variant_spec("dense").bits is None
    for bad in ["compress-0", "compress-9", "turbo", ""]:
        with pytest.raises(ValueError, match="variant"):
            fp.parse_variants(bad)


# ----------------------------------------------------------------------------- the search

@pytest.mark.parametrize("answer", [0, 1, 2, 7, 100, 1000, 4096])
@pytest.mark.parametrize("hint", [1, 5, 64, 5000])
def test_largest_fitting_finds_the_boundary_with_few_tries(answer, hint):
    tried = []

    def fits(b):
        tried.append(b)
        return b <= answer

    assert fp.largest_fitting(fits, hint=hint, limit=4096) == answer
    assert len(tried) == len(set(tried))  # no batch tried twice
    assert len(tried) <= 2 * 13 + 2  # ~2 log2(limit)


def test_largest_fitting_stops_at_the_limit():
    assert fp.largest_fitting(lambda b: True, limit=300) == 300
    assert fp.largest_fitting(lambda b: False, hint=10) == 0


# ----------------------------------------------------------------------------- the model against measurements

def _variant(name: str, model_name: str):
    torch.manual_seed(0)
    spec = fp.variant_spec(name)
    return spec.build(facto.create_model(model_name, 10, 1)), spec.bits


@pytest.mark.parametrize("model_name", ["simple_cnn", "resnet20"])
@pytest.mark.parametrize("variant", ["dense", "compress-4", "paper", "balanced"])
def test_transient_model_within_tolerance_of_the_profiler_peak(model_name, variant):
    """The modelled step peak (gradients + activations incl. transients) against the CPU profiler."""
    model, bits = _variant(variant, model_name)
    torch.manual_seed(1)
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    measured = sp.measure_step_peak_cpu(model, x, y, bits)
    predicted = sp.predict_step_peak(model, x, bits)
    assert abs(predicted - measured.peak) <= sp.TOLERANCE * measured.peak, (predicted, measured)
    # the transient alone: what the model adds above the stored bytes, within the same margin
    transient_measured = measured.peak - measured.gradients - measured.stored
    transient_predicted = predicted - sp.trainable_bytes(model) - measured.stored
    assert abs(transient_predicted - transient_measured) <= sp.TOLERANCE * measured.peak
    if variant != "dense":  # compressed maps: the transients, not the stored bytes, set the peak
        assert transient_measured > measured.stored


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["simple_cnn", "resnet20"])
@pytest.mark.parametrize("variant", ["dense", "compress-4"])
def test_transient_model_under_bf16_autocast(model_name, variant):
    """Mixed precision is modelled too: the probes run under autocast (here CPU bf16)."""
    model, bits = _variant(variant, model_name)
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    measured = sp.measure_step_peak_cpu(model, x, y, bits, precision="bf16")
    predicted = sp.predict_step_peak(model, x, bits, precision="bf16")
    assert abs(predicted - measured.peak) <= sp.TOLERANCE * measured.peak, (predicted, measured)


def test_profiler_sees_a_known_allocation():
    """measure_step_peak_cpu counts real bytes: a model holding an extra 8 MB map in forward shows it."""
    class Wasteful(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 10)

        def forward(self, x):
            waste = torch.ones(2 * 2**20)  # 8 MiB, freed when forward returns
            return self.fc(x) + 0 * waste.sum()

    x, y = torch.randn(2, 4), torch.randint(0, 10, (2,))
    peak = sp.measure_step_peak_cpu(Wasteful(), x, y, None)
    assert 8 * 2**20 <= peak.forward_rise < 9 * 2**20


def test_stored_bytes_are_the_meters_and_linear_in_the_batch():
    model, bits = _variant("balanced", "resnet20")
    x = torch.randn(4, 1, 32, 32)
    assert sp.trace_forward(model, x, bits).stored == facto.measure_activations(model, x, bits).bytes
    profile = fp.profile_variant(fp.variant_spec("balanced"), facto.create_model("resnet20", 10, 1), (1, 32, 32))
    actual = facto.measure_activations(model, torch.randn(12, 1, 32, 32), bits).bytes
    assert abs(profile.stored.at(12) - actual) <= 0.01 * actual


# ----------------------------------------------------------------------------- limits, checked before the work

@pytest.fixture()
def no_work(monkeypatch):
    """Building or measuring a model fails the test: a limit must stop the plan before either."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the work started although a limit forbids it")

    for module, name in ((fp, "fresh_model"), (fp, "profile_variant"), (sp, "trace_forward")):
        monkeypatch.setattr(module, name, forbidden)


def test_an_input_above_the_limit_is_refused_before_any_work(no_work):
    with pytest.raises(fb.LimitError) as err:
        fp.plan("resnet20", "3x2048x2048", 10, "8GB", max_input=3 * 224 * 224)
    assert str(err.value) == ("input=3x2048x2048 has 12,582,912 values per image (C x H x W), above the limit of "
                              "150,528 here (e.g. 3x224x224)")
    assert isinstance(err.value, ValueError)  # the CLI and the pages report it as a user mistake
    with pytest.raises(fb.LimitError, match=r"input=1x200x200 has 40,000 values .* limit of 9,999 here \(e\.g\. 1x99x99\)"):
        fp.plan("simple_cnn", (1, 200, 200), 10, "8GB", max_input=9_999)


def test_a_model_above_the_parameter_limit_is_refused_before_it_is_built(monkeypatch):
    monkeypatch.setattr(fp, "profile_variant", lambda *a, **k: pytest.fail("measured although too large"))
    with pytest.raises(fb.LimitError) as err:
        fp.plan("resnet20", "3x32x32", 10, "8GB", max_params=100_000)
    assert str(err.value) == "model='resnet20' has 272,474 parameters, above the limit of 100,000 here"


def test_the_largest_allowed_input_and_model_are_planned():
    result = fp.plan("simple_cnn", "1x48x48", 10, "1GB", variants="dense", device="cpu",
                     max_input=48 * 48, max_params=272_474)
    assert result.input_shape == (1, 48, 48) and result.rows[0].max_batch > 0


def test_layer_pages_refuse_a_batch_above_the_limit_before_any_work(monkeypatch):
    from facto.memory import analysis, explain

    monkeypatch.setattr(analysis, "dense_model", lambda *a, **k: pytest.fail("built although too large"))
    monkeypatch.setattr(explain, "starting_model", lambda *a, **k: pytest.fail("built although too large"))
    config = facto.RunConfig(batch_size=5000)
    message = "batch_size=5,000 is above the limit of 1,024 images per batch here"
    with pytest.raises(fb.LimitError, match=message):
        analysis.analyse_layers(config, max_batch=1024)
    with pytest.raises(fb.LimitError, match=message):
        explain.explain_layer(config, "conv1", max_batch=1024)
    with pytest.raises(fb.LimitError, match=message):
        explain.rank_curve(config, "conv1", ["0.5"], max_batch=1024)


# ----------------------------------------------------------------------------- planning

@pytest.fixture(scope="module")
def resnet_plan():
    return fp.plan("resnet20", "3x32x32", 10, "1GB", variants=["dense", "compress-4", "balanced"], device="cpu")


def test_breakdown_adds_up_and_the_boundary_holds(resnet_plan):
    for row in resnet_plan.rows:
        b = row.breakdown
        assert b.batch == row.max_batch > 0
        assert sum(getattr(b, c) for c in fp.COMPONENTS) == b.total <= resnet_plan.budget
        assert row.next_total > resnet_plan.budget
        assert b.reserve == fp.DEFAULT_RESERVE and b.transients >= 0 and b.activations > 0


def test_dense_fits_fewer_samples_than_facto_balanced(resnet_plan):
    batches = {r.variant: r.max_batch for r in resnet_plan.rows}
    assert batches["dense"] < batches["compress-4"] < batches["balanced"]
    assert not any(n.startswith("not even batch 1") for n in resnet_plan.notes)  # every variant fits


def test_optimizer_state_counts_trained_parameters_only(resnet_plan):
    rows = {r.variant: r.breakdown for r in resnet_plan.rows}
    assert rows["dense"].optimizer_state == rows["dense"].gradients  # sgd: momentum, 1 per parameter
    model = fp.variant_spec("balanced").build(facto.create_model("resnet20", 10, 3))
    trained = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * 4 for p in model.parameters() if not p.requires_grad)
    assert rows["balanced"].gradients == rows["balanced"].optimizer_state == trained  # frozen: no grad, no state
    assert frozen > 0
    adam = fp.profile_variant(fp.variant_spec("balanced"), facto.create_model("resnet20", 10, 3), (3, 32, 32),
                              optimizer="adam")
    assert adam.optimizer_state == 2 * adam.gradients == 2 * rows["balanced"].gradients


def test_prediction_is_monotone_in_the_budget():
    profile = fp.profile_variant(fp.variant_spec("compress-4"), facto.create_model("simple_cnn", 10, 1), (1, 32, 32))
    budgets = [fp.DEFAULT_RESERVE + k * 10**6 for k in (1, 5, 20, 50, 200, 1000)]
    batches = [fp.plan_row(profile, b).max_batch for b in budgets]
    assert batches == sorted(batches) and batches[0] < batches[-1]
    for budget in budgets:
        row = fp.plan_row(profile, budget)
        assert profile.total(row.max_batch + 1) > budget
        assert row.max_batch == 0 or profile.total(row.max_batch) <= budget


def test_nothing_fits_a_budget_below_the_reserve():
    result = fp.plan("simple_cnn", "1x32x32", 10, "100MB", variants=["dense"], device="cpu")
    row = result.rows[0]
    assert row.max_batch == 0 and row.breakdown.batch == 1 and row.next_total > result.budget
    # and it says so, with what batch 1 needs (the CLI prints notes, the page shows them)
    assert len(result.notes) == 1 and result.notes[0].startswith("not even batch 1 fits in 100.0 MB")
    assert f"dense fp32 needs {row.next_total / 1e6:,.1f} MB" in result.notes[0]


def test_table_and_chart_data(resnet_plan):
    rows = fp.table_rows(resnet_plan)
    chart = fp.chart_data(resnet_plan)
    assert [r["max batch"] for r in rows] == chart["max_batch"] == [r.max_batch for r in resnet_plan.rows]
    for i, r in enumerate(rows):
        stacked = sum(chart["series"][c][i] for c in chart["components"])
        assert stacked == pytest.approx(resnet_plan.rows[i].breakdown.total / 1e6)
        assert r["total MB"] == pytest.approx(stacked, abs=0.1)
    assert chart["budget"] == resnet_plan.budget / 1e6


def test_bf16_stores_less_than_fp32_for_dense():
    dense = facto.create_model("simple_cnn", 10, 1)
    fp32 = fp.profile_variant(fp.variant_spec("dense"), dense, (1, 32, 32), precision="fp32")
    bf16 = fp.profile_variant(fp.variant_spec("dense"), dense, (1, 32, 32), precision="bf16")
    assert bf16.stored.slope < 0.6 * fp32.stored.slope


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: test_verify_measures_on_a_gpu runs instead")
def test_verify_says_it_needs_a_gpu(resnet_plan, capsys):
    with pytest.raises(fv.GPURequiredError, match="needs a GPU"):
        fv.verify(resnet_plan)
    assert plan_cli(["--verify", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "needs a GPU" in captured.err and captured.err.count("\n") == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_verify_measures_on_a_gpu():
    """plan --verify's path on a real GPU: each variant's largest batch found by real steps under the budget,
    its allocator peak within the budget, and Facto's batch at least dense's."""
    result = fp.plan("simple_cnn", "1x32x32", 10, "600MB", variants=["dense", "balanced"], device="cuda")
    rows = {r.variant: r for r in fv.verify(result)}
    for r in rows.values():
        assert r.error is None and r.measured and r.measured > 0
        assert r.peak_allocated is not None and r.peak_allocated <= result.budget
    assert rows["balanced"].measured >= rows["dense"].measured


# ----------------------------------------------------------------------------- command line

def plan_cli(argv: list[str]) -> int:
    """`facto plan ARGV` through the one command line."""
    return main(["plan", *argv])



def test_main_json_is_the_only_thing_on_stdout(capsys):
    argv = ["--model", "simple_cnn", "--input", "1x32x32", "--budget", "500MB", "--variants", "dense,balanced",
            "--device", "cpu", "--json"]
    assert plan_cli(argv) == 0
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert [r["variant"] for r in document["rows"]] == ["dense", "balanced"]
    for r in document["rows"]:
        assert r["max_batch"] > 0 and r["breakdown"]["total"] <= document["budget"] < r["next_total"]
    assert "probing" in err


def test_main_text_table(capsys):
    assert plan_cli(["--model", "simple_cnn", "--input", "1x32x32", "--budget", "1GB", "--variants", "dense",
                    "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "dense: dense fp32" in out and "max" in out and "batch" in out
    assert plan_cli(["--model", "simple_cnn", "--input", "1x32x32", "--budget", "1GB", "--variants", "dense",
                     "--device", "cpu", "--wide"]) == 0
    wide = capsys.readouterr().out.splitlines()
    header = next(line for line in wide if line.startswith("variant"))
    assert "max batch" in header and "per sample MB" in header  # at full width: one header line
    assert any(line.startswith("dense fp32 ") for line in wide)


@pytest.mark.parametrize("budget, message", [
    ("8", "--budget='8' has no unit: write it like 8GB, 512MiB or 1.5GiB"),
    ("0GB", "--budget='0GB' is not allowed: the budget must be above zero, e.g. 8GB"),
])
def test_main_refuses_a_budget_without_a_unit_or_of_zero_in_one_line(budget, message, capsys):
    assert plan_cli(["--model", "simple_cnn", "--budget", budget]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: {message}\n"


def test_main_takes_the_model_as_its_first_word(capsys):
    """`facto plan simple_cnn ...` as `facto plan --model simple_cnn ...`; both, differing: a mistake."""
    argv = ["--input", "1x32x32", "--budget", "1GB", "--variants", "dense", "--device", "cpu", "--json"]
    assert plan_cli(["simple_cnn", *argv]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "simple_cnn"
    assert plan_cli(["simple_cnn", "--model", "resnet18", *argv]) == 2
    assert "give one" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plan_cli(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert help_text.startswith("usage: facto plan") and "(default: 8GB)" in help_text and "(default: resnet20)" in help_text


@pytest.mark.parametrize("argv, needle", [
    (["--budget", "8 GBs"], "budget='8 GBs'"),
    (["--input", "3x224"], "input='3x224'"),
    (["--variants", "dense,turbo"], "variant='turbo'"),
    (["--optimizer", "lion"], "optimizer='lion'"),
    (["--precision", "fp8"], "precision='fp8'"),
    (["--model", "nope"], "nope"),
    (["--no-such-flag"], "no-such-flag"),
])
def test_main_user_mistakes_exit_2_with_one_line(argv, needle, capsys):
    assert plan_cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and needle in captured.err and "Traceback" not in captured.err
