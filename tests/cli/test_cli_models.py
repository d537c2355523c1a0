"""Trained models kept with the history, on the command line: `--init` inputs that cannot be used
(one line, exit 2, nothing stored), `runs export --model`, what `runs show/list` and `train` say of
kept models, the round trip of a kept Facto model and a baseline continued with `--init run:ID`."""
from __future__ import annotations

import json
import urllib.error
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from facto.cli.main import main
from facto.config import RunConfig
from facto.engine.data import load_data
from facto.engine.events import ModelsEvent, StepEvent
from facto.engine.models import create_model
from facto.engine.recorder import record
from facto.engine.train import compare
from facto.store.history import RunStore

TINY = ["--max-train", "128", "--max-test", "64", "--batch-size", "32", "--device", "cpu", "--max-steps", "3"]
CONFIG = dict(model="simple_cnn", dataset="digits", max_train=128, max_test=64, batch_size=32, device="cpu",
              max_steps=3)


@pytest.fixture(autouse=True)
def facto_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def stored_runs(capsys) -> list:
    capsys.readouterr()
    assert main(["runs", "list", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- inputs that cannot start a run

def other_architecture(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "simple.pt"
    torch.save(create_model("simple_cnn").state_dict(), path)
    return ["--model", "resnet20", "--init", str(path)], "does not fit resnet20"


def truncated(tmp_path: Path) -> tuple[list[str], str]:
    whole = tmp_path / "whole.pt"
    torch.save(create_model("simple_cnn").state_dict(), whole)
    data = whole.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    return ["--init", str(path)], "cannot be read as a PyTorch state dict"


def offline_pretrained(tmp_path: Path, monkeypatch) -> tuple[list[str], str]:
    """No network: TORCH_HOME empty, and the download fails as it does without one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return ["--model", "resnet18", "--init", "pretrained"], "could not be downloaded"


@pytest.mark.parametrize("case", ["missing", "other architecture", "truncated", "unknown run", "offline",
                                  "no published weights"])
def test_a_start_that_cannot_be_used_is_one_line_and_stores_nothing(case, capsys, tmp_path, monkeypatch,
                                                                     facto_home):
    argv, needle = {
        "missing": lambda: (["--init", str(tmp_path / "missing.pt")], "does not exist"),
        "other architecture": lambda: other_architecture(tmp_path),
        "truncated": lambda: truncated(tmp_path),
        "unknown run": lambda: (["--init", "run:999"], "run 999 does not exist"),
        "offline": lambda: offline_pretrained(tmp_path, monkeypatch),
        "no published weights": lambda: (["--init", "pretrained"], "publishes no weights for it"),
    }[case]()
    assert main(["train", *TINY, *argv]) == 2
    err = one_error(capsys)
    assert needle in err
    assert stored_runs(capsys) == []
    assert not (facto_home / "models").exists()
    if case == "offline":  # it says where to put the file by hand, and nothing was written there
        assert "Network is unreachable" in err and "resnet18-" in err and str(tmp_path / "torch") in err
        assert not any((tmp_path / "torch").rglob("*.pth"))


def test_a_sweep_from_an_unusable_start_stores_no_sweep(capsys):
    assert main(["sweep", *TINY, "--ranks", "0.5", "--bits-list", "4", "--init", "run:7"]) == 2
    assert "init='run:7'" in one_error(capsys)
    assert stored_runs(capsys) == []


# ----------------------------------------------------------------------------- a recorded run and its models

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One recorded run of both variants, and the live Facto model at its end (grabbed as the run
    turns its models into plain state dicts)."""
    import facto.engine.train as train

    home = tmp_path_factory.mktemp("home")
    live: list[torch.nn.Module] = []
    names: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACTO_HOME", str(home))
        plain = train.trained_state

        def stash(model):
            live.append(model)
            return plain(model)

        mp.setattr(train, "trained_state", stash)

        def noting(events):
            for event in events:
                if isinstance(event, ModelsEvent):
                    names.extend(event.states)  # the order trained_state was called in
                yield event

        with RunStore() as store:
            events = list(record(noting(train.compare(RunConfig(**CONFIG))), store))
    models = dict(zip(names, live))
    assert set(models) == {"baseline", "facto"}
    run_id = next(e.run_id for e in events if isinstance(e, ModelsEvent))
    return {"home": home, "run_id": run_id, "models": models, "events": events}


def test_a_kept_facto_model_reloads_into_the_original_architecture(trained, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FACTO_HOME", str(trained["home"]))
    run_id = trained["run_id"]
    out = tmp_path / "facto.pt"
    assert main(["runs", "export", str(run_id), "--model", str(out)]) == 0
    assert f"run {run_id}'s facto model" in capsys.readouterr().err
    with RunStore() as store:
        kept = store.kept_models(run_id)
    assert out.read_bytes() == kept["facto"].path.read_bytes()  # a copy of the kept file
    images = next(iter(load_data("digits", batch_size=64, seed=0, max_train=128, max_test=64).test_loader))[0]
    reloaded = create_model("simple_cnn", 10, 1)
    reloaded.load_state_dict(torch.load(out, weights_only=True))
    with torch.no_grad():
        live = trained["models"]["facto"].eval()(images)
        again = reloaded.eval()(images)
        baseline = trained["models"]["baseline"].eval()(images)
    scale = live.abs().max().item()
    assert (again - live).abs().max().item() <= 1e-5 * max(1.0, scale)
    assert (baseline - live).abs().max().item() > 1e-3 * max(1.0, scale)  # the check tells models apart


def test_show_list_and_export_say_what_a_run_kept(trained, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FACTO_HOME", str(trained["home"]))
    run_id = trained["run_id"]
    with RunStore() as store:
        kept = store.kept_models(run_id)
    capsys.readouterr()
    assert main(["runs", "show", str(run_id)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kept_models"] == {v: {"file": str(m.path), "bytes": m.bytes} for v, m in kept.items()}
    assert "kept_models_note" not in shown
    (listed,) = stored_runs(capsys)
    assert listed["kept_bytes"] == {v: m.bytes for v, m in kept.items()}
    assert main(["runs", "list"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert all(len(line) <= 100 for line in lines) and "kept" in " ".join(lines[:3])
    total = sum(m.bytes for m in kept.values()) / 1e6
    assert f"{total:.1f}" in captured.out and f"kept models of these runs: {total:.1f} MB" in captured.err
    base = tmp_path / "baseline.pt"
    assert main(["runs", "export", str(run_id), "--model", str(base), "--variant", "baseline"]) == 0
    assert base.read_bytes() == kept["baseline"].path.read_bytes()
    capsys.readouterr()
    # never onto the history's own files
    for target in (kept["facto"].path, trained["home"] / "runs.db"):
        before = target.read_bytes()
        assert main(["runs", "export", str(run_id), "--model", str(target)]) == 2
        assert "not allowed" in one_error(capsys) and target.read_bytes() == before
    csv = tmp_path / "run.csv"  # the CSV export is unchanged
    assert main(["runs", "export", str(run_id), "-o", str(csv)]) == 0
    assert csv.read_text().startswith("run_id,variant")


def test_a_kept_baseline_continues_from_its_test_accuracy(trained, capsys, monkeypatch):
    monkeypatch.setenv("FACTO_HOME", str(trained["home"]))
    first = trained["run_id"]
    with RunStore() as store:
        before = store.get_run(first).summary["accuracy"]["baseline"]
        last_test = [r for r in store.metrics(first, kind="eval", variant="baseline")][-1]
    capsys.readouterr()
    assert main(["train", *TINY, "--init", f"run:{first}", "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["init"]["source"] == f"run {first} (baseline)" and document["init"]["loaded"]
    assert document["init"]["line"] in captured.err  # said as the run starts
    with RunStore() as store:
        second = max(r.id for r in store.list_runs())
        kept = store.kept_models(second)
        start = [r for r in store.metrics(second, kind="eval", variant="baseline") if r["step"] == 0]
    assert document["kept_models"] == {v: m.bytes for v, m in kept.items()} and set(kept) == {"baseline", "facto"}
    (start,) = start
    assert start["accuracy"] == before
    assert start["loss"] == pytest.approx(last_test["loss"], rel=1e-5)


def test_a_run_without_kept_models_says_why(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--variants", "baseline", "--no-keep-models"]) == 0
    captured = capsys.readouterr()
    assert "models kept" not in captured.out and "started from" not in captured.err  # random weights: no line
    assert main(["runs", "show", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kept_models"] == {} and "keep_models was off" in shown["kept_models_note"]
    assert main(["runs", "export", "1", "--model", "x.pt"]) == 2
    assert "keep_models was off" in one_error(capsys) and not (tmp_path / "x.pt").exists()
    assert main(["train", *TINY, "--init", "run:1"]) == 2
    assert "keep_models was off" in one_error(capsys)
    assert len(stored_runs(capsys)) == 1


def _kept_weights_trained(store: RunStore, run_id: int) -> dict[str, dict]:
    """The run's kept state dicts, each checked to load into the plain architecture (strict)."""
    states = {}
    for variant, model in store.kept_models(run_id).items():
        state = torch.load(model.path, weights_only=True)
        create_model("simple_cnn", 10, 1).load_state_dict(state)
        states[variant] = state
    return states


@pytest.mark.parametrize("how", ["closed", "stop request", "ctrl-c"])
def test_a_run_stopped_in_its_steps_keeps_the_models_trained_so_far(capsys, tmp_path, monkeypatch, how):
    """Stop in the app (a stop request inside compare), Ctrl-C inside the steps, or the reader
    closing the stream: the run is stored as interrupted with its steps and both models as they
    were, trained (not the starting weights), and the history hands them out."""
    from facto.engine.build import dense_model
    from facto.engine.stopping import RunStopped, stop_requests

    from facto.engine.train import Trainer, trained_state

    config = RunConfig(**{**CONFIG, "max_steps": 6})
    seen: list[StepEvent] = []
    trainers: list[Trainer] = []  # the live ones, to compare the kept files with
    create = Trainer.create.__func__
    monkeypatch.setattr(Trainer, "create", classmethod(lambda cls, *a, **k: trainers.append(create(cls, *a, **k))
                                                       or trainers[-1]))
    if how == "ctrl-c":
        real_step = Trainer.train_step

        def step_then_ctrl_c(self, x, y):
            if len(seen) >= 3:
                raise KeyboardInterrupt
            return real_step(self, x, y)

        monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    asked = how == "stop request"
    with RunStore() as store, stop_requests(lambda: "stopped by the user" if asked and len(seen) >= 3 else None):
        events = record(compare(config), store)
        with pytest.raises((RunStopped, KeyboardInterrupt)) if how != "closed" else nullcontext():
            for event in events:
                if isinstance(event, StepEvent):
                    seen.append(event)
                    if how == "closed" and len(seen) == 3:
                        events.close()  # as the CLI closes it after a Ctrl-C outside the steps
                        break
        (run,) = store.list_runs()
        assert run.status == "interrupted"
        kept = _kept_weights_trained(store, run.id)
    assert set(kept) == {"baseline", "facto"} and 3 <= len(seen) < 6  # stopped mid-run
    start = dense_model(config, 10, 1).state_dict()
    assert not torch.equal(kept["baseline"]["features.0.weight"], start["features.0.weight"])  # trained
    assert sorted(t.name for t in trainers) == ["baseline", "facto"]
    for t in trainers:  # each file holds the weights its model had when the run stopped
        live = trained_state(t.model)
        assert all(torch.equal(live[k], kept[t.name][k]) for k in live), t.name
    assert main(["runs", "show", str(run.id)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert set(shown["kept_models"]) == {"baseline", "facto"} and not shown.get("kept_models_note")
    assert main(["runs", "export", str(run.id), "--model", str(tmp_path / "x.pt")]) == 0
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True)["features.0.weight"],
                       kept["facto"]["features.0.weight"])


def test_a_run_stopped_before_its_first_step_keeps_no_model_and_the_history_says_so(capsys, tmp_path):
    with RunStore() as store:
        events = record(compare(RunConfig(**CONFIG)), store)
        next(events)  # the run is stored as it loads its data
        events.close()  # as a Ctrl-C closes it
        (run,) = store.list_runs()
    assert run.status == "interrupted"
    assert main(["runs", "show", str(run.id)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kept_models"] == {} and "before its first training step" in shown["kept_models_note"]
    assert main(["runs", "export", str(run.id), "--model", str(tmp_path / "x.pt")]) == 2
    assert "before its first training step" in one_error(capsys) and not (tmp_path / "x.pt").exists()


def test_train_says_where_its_models_are_kept_or_why_they_are_lost(capsys, tmp_path, monkeypatch):
    assert main(["train", *TINY, "--variants", "baseline", "--quiet"]) == 0
    out = capsys.readouterr().out
    with RunStore() as store:
        (kept,) = store.kept_models(1).values()
    assert f"models kept with run 1: baseline {kept.bytes / 1e6:.2f} MB" in out and "runs export 1 --model" in out
    home = tmp_path / "other"
    home.mkdir()
    (home / "models").write_text("a file where the models folder goes")
    monkeypatch.setenv("FACTO_HOME", str(home))
    assert main(["train", *TINY, "--variants", "baseline", "--quiet", "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["status"] == "completed" and document["kept_models"] == {}
    assert "could not be kept" in document["kept_models_error"]
    assert f"note: {document['kept_models_error']}" in captured.err
