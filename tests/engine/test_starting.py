"""Starting weights: reading state-dict files, loading them into a model whose ends differ, and the
checks a run makes before it starts (each bad input one line, nothing stored)."""
from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

from facto.config import RunConfig
from facto.engine import starting
from facto.engine.build import dense_model
from facto.engine.recorder import record
from facto.engine.starting import InitError, check_init, load_state, read_state_file
from facto.engine.train import compare
from facto.store.history import RunStore


def cnn(classes: int = 10, channels: int = 1, seed: int = 0) -> nn.Module:
    return dense_model(RunConfig(seed=seed), classes, channels)


def test_the_same_architecture_loads_every_tensor():
    source, target = cnn(seed=1), cnn(seed=2)
    report = load_state(target, source.state_dict(), "run 1")
    assert report.loaded == list(source.state_dict()) and not report.new and not report.adapted
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    assert report.line() == f"started from run 1: {len(report.loaded)} tensors loaded"


def test_the_classifier_stays_fresh_for_other_classes_and_the_rest_loads():
    source, target = cnn(classes=10, seed=1), cnn(classes=5, seed=2)
    head = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("classifier")}
    report = load_state(target, source.state_dict(), "file x.pt")
    assert sorted(report.new) == sorted(head)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in head.items())  # kept as drawn
    body = [k for k in source.state_dict() if k not in head]
    assert report.loaded == body and all(torch.equal(source.state_dict()[k], target.state_dict()[k]) for k in body)
    assert "2 new (classifier" in report.line()


def test_a_colour_first_conv_is_summed_so_a_grey_image_gives_the_same_maps():
    colour, grey = cnn(channels=3, seed=1), cnn(channels=1, seed=2)
    report = load_state(grey, colour.state_dict(), "file rgb.pt")
    first = next(n for n, m in grey.named_modules() if isinstance(m, nn.Conv2d))
    assert report.adapted == [first + ".weight"]
    x = torch.randn(2, 1, 32, 32)
    conv_c, conv_g = colour.get_submodule(first), grey.get_submodule(first)
    torch.testing.assert_close(conv_g(x), conv_c(x.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)


def test_a_misfit_names_the_first_tensor_and_leaves_the_model_as_it_was():
    target = cnn(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    state = cnn(seed=1).state_dict()
    key = [k for k in state if k.endswith("weight")][3]
    state[key] = torch.zeros(7, 7)
    with pytest.raises(InitError, match=f"tensor '{key}' is 7x7 there but"):
        load_state(target, state, "file y.pt", "simple_cnn")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    state = cnn(seed=1).state_dict()
    state["extra.weight"] = torch.zeros(3)
    with pytest.raises(InitError, match="'extra.weight' that simple_cnn does not have"):
        load_state(target, state, "file y.pt", "simple_cnn")
    assert load_state(target, state, "published", allow_extra=True).skipped == ["extra.weight"]


def test_state_files_are_read_inside_checkpoints_and_without_wrappers(tmp_path):
    state = cnn().state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    read = read_state_file(path)
    assert list(read) == list(state) and all(torch.equal(read[k], state[k]) for k in state)


@pytest.mark.parametrize("make, says", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b"not a checkpoint"), "cannot be read as a PyTorch state dict"),
    (lambda p: torch.save({"weights": [1, 2]}, p), "entry 'weights' is a list, not a tensor"),
    (lambda p: torch.save({}, p), "holds no state dict"),
])
def test_unreadable_files_are_one_line(tmp_path, make, says):
    path = tmp_path / "w.pt"
    make(path)
    with pytest.raises(InitError, match=says) as error:
        read_state_file(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_truncated_file_is_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(cnn().state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InitError, match="truncated or not one"):
        read_state_file(path)


def test_pretrained_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, target):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(starting, "_download", offline)
    with pytest.raises(InitError) as error:
        check_init(RunConfig(model="resnet18", init="pretrained"), 10, 1)
    text = str(error.value)
    want = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "could not be downloaded (no network)" in text and str(want) in text and "\n" not in text


def test_pretrained_weights_on_disk_load_with_the_stem_and_head_fresh(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = starting.pretrained_file("resnet18")[0]
    path.parent.mkdir(parents=True)
    published = torchvision.models.resnet18().state_dict()  # torchvision's layout: 7x7 stem, 1000 classes
    torch.save(published, path)
    monkeypatch.setattr(starting, "_download", lambda url, target: pytest.fail("downloaded"))
    report = check_init(RunConfig(model="resnet18", init="pretrained"), 10, 1)
    assert sorted(report.new) == ["conv1.weight", "fc.bias", "fc.weight"]
    assert len(report.loaded) == len(published) - 3 and report.source.startswith("torchvision resnet18")


def test_pretrained_is_refused_for_models_without_published_weights():
    with pytest.raises(InitError, match="torchvision publishes no weights for it"):
        check_init(RunConfig(model="simple_cnn", init="pretrained"), 10, 1)


def test_runs_are_checked_for_existence_model_and_kept_weights(tmp_path):
    db = tmp_path / "runs.db"
    with pytest.raises(InitError, match="no run history at"):
        check_init(RunConfig(init="run:1"), 10, 1, db)
    with RunStore(db) as store:
        first = store.start_run(RunConfig(model="resnet20").to_dict())
        second = store.start_run(RunConfig(keep_models=False).to_dict())
        store.finish_run(second, "completed")
    with pytest.raises(InitError, match="run 9 does not exist"):
        check_init(RunConfig(init="run:9"), 10, 1, db)
    with pytest.raises(InitError, match=f"run {first} trained resnet20, not simple_cnn"):
        check_init(RunConfig(init=f"run:{first}"), 10, 1, db)
    with pytest.raises(InitError, match="keep_models was off"):
        check_init(RunConfig(init=f"run:{second}"), 10, 1, db)


def test_a_run_that_cannot_start_stores_nothing(tmp_path):
    db = tmp_path / "runs.db"
    path = tmp_path / "other.pt"
    torch.save(dense_model(RunConfig(model="resnet20"), 10, 1).state_dict(), path)
    with RunStore(db) as store:
        events = record(compare(RunConfig(init=str(path)), history=db), store)
        with pytest.raises(InitError, match="does not fit simple_cnn"):
            next(events)
        assert store.list_runs() == []


def test_from_trained_weights_facto_is_refitted_and_tested_before_its_first_step(tmp_path):
    from facto.engine.events import EvalEvent, StartEvent

    db = tmp_path / "runs.db"
    data = dict(max_test=200)
    with RunStore(db) as store:
        list(record(compare(RunConfig(epochs=2, **data), variants=("baseline",), history=db), store))
    first = {}
    for refit in (True, False):
        events = list(compare(RunConfig(init="run:1", epochs=1, max_steps=1, refit=refit, **data), history=db))
        start = next(e for e in events if isinstance(e, StartEvent))
        first[refit] = {e.variant: e.test_accuracy for e in events if isinstance(e, EvalEvent) and e.step == 0}
        if refit:
            factorized = [r["name"] for r in start.report if r["kind"] == "factorized"]
            assert start.calibration["refitted"] == factorized and start.calibration["batchnorm_batches"] == 10
        else:
            assert start.calibration is None
    assert first[True]["baseline"] == first[False]["baseline"] > 60  # the kept baseline, tested as it was left
    assert first[False]["facto"] < first[True]["baseline"] - 20  # factorizing trained weights costs accuracy
    assert first[True]["facto"] > first[True]["baseline"] - 15  # the refit wins most of it back


def test_random_weights_are_neither_refitted_nor_tested_at_step_0():
    from facto.engine.events import EvalEvent, StartEvent

    events = list(compare(RunConfig(epochs=1, max_steps=1, max_train=64, max_test=32)))
    assert next(e for e in events if isinstance(e, StartEvent)).calibration is None
    assert all(e.step > 0 for e in events if isinstance(e, EvalEvent))


def test_fitting_facto_leaves_the_baselines_batches_alone(tmp_path):
    from facto.engine.events import StepEvent

    path = tmp_path / "w.pt"
    torch.save(cnn(seed=3).state_dict(), path)
    losses = {}
    for refit in (True, False):
        events = compare(RunConfig(init=str(path), epochs=1, max_steps=3, max_train=256, max_test=32, refit=refit),
                         variants=("baseline", "facto"))
        losses[refit] = [e.loss for e in events if isinstance(e, StepEvent) and e.variant == "baseline"]
    assert len(losses[True]) == 3 and losses[True] == losses[False]
