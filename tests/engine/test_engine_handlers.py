"""The training run's parts, each alone: handler classes on small ignite engines (fake clocks, scripted
validation scores), and the builders' datasets, loaders, inferer and trainer on synthetic cases."""

from __future__ import annotations

import itertools
import json
import logging
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor

from medseg.engine.handlers import (
    BestCheckpoint, DataWaitTimer, EarlyStop, EpochProgress, FiniteLoss, LastEpochValidation, LossNotFinite,
    ResumableCheckpoint, Stop, TimeBudget,
)

from tests.conftest import FAST


def idle_engine() -> Engine:
    return Engine(lambda engine, batch: batch)


class FakeClock:
    """Seconds that advance only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_budget_stops_the_engine_once_the_budget_has_passed():
    clock, stop = FakeClock(), Stop()
    trainer = idle_engine()
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: setattr(clock, "now", clock.now + 25.0))
    TimeBudget(1.0, stop, started=0.0, clock=clock).attach(trainer)  # 60 s: passed after the 3rd iteration (75 s)
    ResumableCheckpoint(None, None, every=100, stop=stop, writer=False).attach(trainer)  # ends the run on a stop
    trainer.run(range(5), max_epochs=4)
    assert stop.reason == "time budget"
    assert (trainer.state.epoch, trainer.state.iteration) == (1, 3)


def test_time_budget_leaves_a_run_within_the_budget_alone():
    clock, stop = FakeClock(), Stop()
    trainer = idle_engine()
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: setattr(clock, "now", clock.now + 1.0))
    TimeBudget(1.0, stop, started=0.0, clock=clock).attach(trainer)
    trainer.run(range(5), max_epochs=4)  # 20 s of 60
    assert stop.reason == "" and trainer.state.iteration == 20


def toy_trainer(loss_at, n_iter: int, epoch_length: int):
    """MONAI's SupervisedTrainer on a 4-weight linear 'network'; ``loss_at(iteration, pred)`` is the loss."""
    from monai.engines import SupervisedTrainer

    net = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.ones_(net.weight)
    data = [{"image": torch.ones(1, 4), "label": torch.zeros(1, 1)} for _ in range(n_iter)]
    trainer = SupervisedTrainer(device="cpu", max_epochs=n_iter // epoch_length, train_data_loader=data, network=net,
                                epoch_length=epoch_length, decollate=False,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                                loss_function=lambda pred, label: loss_at(trainer.state.iteration, pred))
    return trainer, net


def test_finite_loss_stops_before_the_update_naming_epoch_and_step(tmp_path):
    trainer, net = toy_trainer(lambda it, pred: pred.sum() * (float("nan") if it == 3 else 1.0), 6, 2)
    weights = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: weights.update({e.state.iteration: net.weight.clone()}))
    stop = Stop()
    FiniteLoss(tmp_path / "last.pt", stop).attach(trainer)
    with pytest.raises(LossNotFinite) as caught:
        trainer.run()
    message = str(caught.value)
    assert "training loss is nan at epoch 2, step 1/2 (iteration 3)" in message
    assert "no checkpoint was written yet" in message and stop.error is caught.value
    assert sorted(weights) == [1, 2] and torch.equal(net.weight, weights[2])  # the bad step never updated

    (tmp_path / "last.pt").write_bytes(b"x")
    trainer, _ = toy_trainer(lambda it, pred: pred.sum() * float("inf"), 2, 2)
    FiniteLoss(tmp_path / "last.pt", Stop()).attach(trainer)
    with pytest.raises(LossNotFinite, match=rf"loss is inf at epoch 1, step 1/2 .* the last good checkpoint is {tmp_path}"):
        trainer.run()


def scripted_validation(scores: list[float], trainer: Engine) -> Engine:
    """An evaluator whose run i scores ``scores[i]`` and keeps the best as MONAI's evaluators do."""
    evaluator = idle_engine()
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1.0, -1
    runs = iter(scores)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _score(engine: Engine) -> None:
        score = next(runs)
        engine.state.metrics = {"val_mean_dice": score}
        if score > engine.state.best_metric:
            engine.state.best_metric, engine.state.best_metric_epoch = score, trainer.state.epoch

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    return evaluator


def test_best_checkpoint_saves_only_when_validation_improves(tmp_path, monkeypatch):
    import medseg.engine.handlers as handlers

    net = torch.nn.Linear(2, 1, bias=False)
    trainer = idle_engine()
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: torch.nn.init.constant_(net.weight, e.state.epoch))
    evaluator = scripted_validation([0.5, 0.4, 0.7, 0.7], trainer)
    best = tmp_path / "best.pt"
    BestCheckpoint(best, net, trainer).attach(evaluator)
    writes = []
    real = handlers.save_checkpoint
    monkeypatch.setattr(handlers, "save_checkpoint",
                        lambda path, payload: (writes.append(trainer.state.epoch), real(path, payload)))
    trainer.run([0], max_epochs=4)
    assert writes == [1, 3]  # the improvements; equal (epoch 4) and worse (epoch 2) scores write nothing
    assert torch.equal(torch.load(best, weights_only=True)["weight"], torch.full((1, 2), 3.0))

    other = tmp_path / "other.pt"
    trainer = idle_engine()
    evaluator = scripted_validation([0.5], trainer)
    BestCheckpoint(other, net, trainer, writer=False).attach(evaluator)  # a rank other than 0
    trainer.run([0], max_epochs=1)
    assert not other.exists()


def test_early_stop_ends_the_run_and_records_the_reason(caplog):
    trainer, stop = idle_engine(), Stop()
    evaluator = scripted_validation([0.5, 0.6, 0.605, 0.6, 0.9, 0.9], trainer)
    early = EarlyStop(patience=2, min_delta=0.01, trainer=trainer, stop=stop)
    early.attach(evaluator)
    with caplog.at_level(logging.INFO, logger="medseg.train"):
        trainer.run([0], max_epochs=6)
    assert trainer.state.epoch == 4  # best 0.6 at epoch 2; 0.605 and 0.6 gain less than 0.01
    assert stop.reason == "early stopping" and early.state_dict()["counter"] == 2
    assert "early stopping: no gain of 0.01 in validation mean Dice for 2 validations" in caplog.text
    again = EarlyStop(patience=2, min_delta=0.01, trainer=idle_engine(), stop=Stop())
    again.load_state_dict(early.state_dict())
    assert again.state_dict() == early.state_dict()


def test_last_epoch_validation_fills_in_what_the_interval_skips():
    trainer, stop = idle_engine(), Stop()
    validated = []
    evaluator = SimpleNamespace(run=validated.append)  # MONAI's Evaluator.run(global_epoch)
    LastEpochValidation(evaluator, every=3, stop=stop).attach(trainer)
    trainer.run([0], max_epochs=5)
    assert validated == [5]  # epochs 3 (the interval's own) and 1, 2, 4 are not this handler's
    validated.clear()
    trainer = idle_engine()
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda _: setattr(stop, "reason", "time budget"))
    LastEpochValidation(evaluator, every=3, stop=stop).attach(trainer)
    ResumableCheckpoint(None, None, every=100, stop=stop, writer=False).attach(trainer)
    trainer.run([0], max_epochs=5)
    assert validated == [2]


def test_data_wait_timer_share_of_the_step():
    ticks = itertools.chain.from_iterable((10.0 * i, 10.0 * i + 1, 10.0 * i + 4) for i in itertools.count())
    timer = DataWaitTimer(clock=lambda: next(ticks))  # per iteration: 1 s waiting of a 4 s step
    trainer = idle_engine()
    timer.attach(trainer)
    trainer.run(range(3), max_epochs=1)
    assert timer.share() == pytest.approx(0.25)
    assert timer.share() == 0.0  # reset by the read


def test_epoch_progress_logs_and_writes_the_history(tmp_path, caplog):
    losses = iter([1.0, 2.0, 3.0, 4.0])
    trainer = Engine(lambda engine, batch: [{"loss": torch.tensor(next(losses))}])
    trainer.optimizer = SimpleNamespace(param_groups=[{"lr": 0.01}])
    clock = FakeClock()
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: setattr(clock, "now", clock.now + 10.0))
    evaluator = idle_engine()  # never run: no validation text
    progress = EpochProgress(evaluator, 0.0, tmp_path / "history.json", clock=clock)
    progress.attach(trainer)
    with caplog.at_level(logging.INFO, logger="medseg.train"):
        trainer.run(range(2), max_epochs=2)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["epoch"] == [1, 2] and history["loss"] == [1.5, 3.5] and history["lr"] == [0.01, 0.01]
    assert history["seconds"] == [10.0, 20.0] and len(history["data_wait"]) == 2 and history["val_epoch"] == []
    assert "epoch 1/2 | loss 1.5000 | lr 1.00e-02 | data wait" in caplog.text and "10s elapsed, ~10s left" in caplog.text


# ---- builders


@pytest.fixture
def fast_cfg():
    from medseg.config import load_config

    return load_config("liver", FAST + ["data.dataset=Synthetic"])


def test_training_loader_yields_plain_seeded_batches_of_the_patch_size(msd_dataset, fast_cfg):
    from medseg.data.layouts import all_cases
    from medseg.engine import builders

    cases = all_cases(fast_cfg, msd_dataset)
    ds = builders.training_dataset(cases, fast_cfg)
    batches = list(builders.training_loader(ds, fast_cfg))
    assert len(batches) == 2  # training.iterations_per_epoch
    for batch in batches:
        assert type(batch["image"]) is torch.Tensor and type(batch["label"]) is torch.Tensor  # no MetaTensor
        assert batch["image"].shape == (2, 1, 16, 16, 16) and batch["image"].dtype == torch.float32
        assert batch["label"].shape == (2, 1, 16, 16, 16)
        assert set(torch.unique(batch["label"]).tolist()) <= {0.0, 1.0, 2.0}
    again = list(builders.training_loader(builders.training_dataset(cases, fast_cfg), fast_cfg))
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(batches, again))  # training.seed
    assert len(list(builders.training_loader(ds, fast_cfg, batches=5))) == 5

    val = list(builders.validation_loader(builders.validation_dataset(cases[:1], fast_cfg)))
    assert len(val) == 1 and isinstance(val[0]["image"], MetaTensor) and val[0]["image"].shape[:2] == (1, 1)


def test_inferer_network_loss_and_trainer_follow_the_config(fast_cfg):
    from monai.engines import SupervisedTrainer
    from monai.inferers import SlidingWindowInferer

    from medseg.engine import builders

    inferer = builders.sliding_window_inferer(fast_cfg)
    assert isinstance(inferer, SlidingWindowInferer) and tuple(inferer.roi_size) == (16, 16, 16)
    net, model = builders.build_model(fast_cfg, torch.device("cpu"))
    assert model is net  # one process: no DistributedDataParallel
    x = torch.rand(2, 1, 16, 16, 16)
    out = net(x)
    assert out.shape == (2, 3, 16, 16, 16)  # background, liver, tumour
    loss = builders.training_loss(fast_cfg)(out, torch.zeros(2, 1, 16, 16, 16))
    assert loss.ndim == 0 and torch.isfinite(loss)
    opt, sched = builders.optimiser_and_schedule(model.parameters(), fast_cfg)
    assert opt.param_groups[0]["lr"] == pytest.approx(fast_cfg["training"]["learning_rate"])
    trainer = builders.build_trainer(fast_cfg, model, [], opt, builders.training_loss(fast_cfg), torch.device("cpu"),
                                     scheduler=sched)
    assert isinstance(trainer, SupervisedTrainer) and trainer.state.max_epochs == fast_cfg["training"]["epochs"]
    assert builders.reported_classes(fast_cfg) == {"liver": [1, 2], "tumour": [2]}


def test_resumable_checkpoint_every_n_epochs_at_the_end_and_on_a_stop(tmp_path):
    from medseg.engine.checkpoint import load_checkpoint

    def recording(trainer: Engine, written: list) -> SimpleNamespace:
        return SimpleNamespace(snapshot=lambda: written.append(trainer.state.epoch) or {"epoch": trainer.state.epoch})

    trainer, stop, written = idle_engine(), Stop(), []
    ResumableCheckpoint(tmp_path / "last.pt", recording(trainer, written), every=2, stop=stop).attach(trainer)
    trainer.run([0], max_epochs=5)
    assert written == [2, 4, 5] and load_checkpoint(tmp_path / "last.pt")["epoch"] == 5
    trainer, written = idle_engine(), []
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=3), lambda _: setattr(stop, "reason", "time budget"))
    ResumableCheckpoint(tmp_path / "stopped.pt", recording(trainer, written), every=10, stop=stop).attach(trainer)
    trainer.run([0], max_epochs=8)
    assert written == [3] and trainer.state.epoch == 3  # saved, then the run ended
    trainer, written = idle_engine(), []
    ResumableCheckpoint(tmp_path / "rank1.pt", recording(trainer, written), every=1, stop=Stop(), writer=False).attach(trainer)
    trainer.run([0], max_epochs=2)
    assert written == [] and not (tmp_path / "rank1.pt").exists()


def test_training_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    from medseg.engine.checkpoint import load_checkpoint, save_checkpoint
    from medseg.engine.handlers import TrainingState

    def parts(seed: int, reason: str = "") -> dict:
        torch.manual_seed(seed)
        net = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(net.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        trainer, evaluator = idle_engine(), idle_engine()
        evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1.0, -1
        return {"net": net, "optimizer": opt, "scheduler": sched, "trainer": trainer, "evaluator": evaluator,
                "loader": SimpleNamespace(generator=torch.Generator().manual_seed(seed)), "transforms": [],
                "early": None, "stop": Stop(reason), "progress": SimpleNamespace(history={"epoch": []})}

    a = parts(0, "early stopping")
    a["net"](torch.ones(1, 3)).sum().backward()
    a["optimizer"].step()
    a["scheduler"].step()
    a["trainer"].run([0, 1], max_epochs=2)
    a["evaluator"].state.best_metric, a["evaluator"].state.best_metric_epoch = 0.75, 2
    torch.randint(10, (4,), generator=a["loader"].generator)
    a["progress"].history["epoch"] = [1, 2]
    save_checkpoint(tmp_path / "last.pt", TrainingState(**a).snapshot())

    b = parts(1)
    TrainingState(**b).restore(load_checkpoint(tmp_path / "last.pt"))
    assert all(torch.equal(v, b["net"].state_dict()[k]) for k, v in a["net"].state_dict().items())
    assert b["optimizer"].state_dict()["state"][0]["step"] == 1 and b["scheduler"].last_epoch == 1
    assert (b["trainer"].state.epoch, b["trainer"].state.iteration) == (2, 4)
    assert (b["evaluator"].state.best_metric, b["evaluator"].state.best_metric_epoch) == (0.75, 2)
    assert torch.equal(b["loader"].generator.get_state(), a["loader"].generator.get_state())
    assert b["stop"].reason == "early stopping"  # kept; a time budget is not (a resumed run has a new one)
    state = load_checkpoint(tmp_path / "last.pt")
    state["stop_reason"] = "time budget"
    c = parts(2, "x")
    TrainingState(**c).restore(state)
    assert c["stop"].reason == ""
