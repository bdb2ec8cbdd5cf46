"""Training engine: losses on hand-made tensors, optimisers, schedules, clipping, mixed precision, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from medseg.config import TrainingConfig
from medseg.engine.losses import build_loss
from medseg.engine.optim import build_optimizer, build_scheduler
from medseg.errors import MedsegError


def tr(**kw) -> TrainingConfig:
    """The training section with ``kw`` over its defaults, validated as a stored config is."""
    return TrainingConfig.model_validate({**TrainingConfig().to_dict(), **kw})


def one_hot_logits(classes: torch.Tensor, n: int, big: float = 30.0) -> torch.Tensor:
    """Logits (1, n, *spatial) whose softmax is (to 1e-13) the one-hot of ``classes`` (spatial)."""
    return (F.one_hot(classes, n).movedim(-1, 0)[None].float() * 2 - 1) * big


def hand_dice(logits: torch.Tensor, label: torch.Tensor, eps: float, background: bool) -> torch.Tensor:
    p = logits.softmax(1)
    g = F.one_hot(label[:, 0], p.shape[1]).movedim(-1, 1).float()
    dims = tuple(range(2, p.ndim))
    per = 1 - (2 * (p * g).sum(dims) + eps) / (p.sum(dims) + g.sum(dims) + eps)  # (B, C)
    return (per if background else per[:, 1:]).mean()


# 2 x 2 x 1 volume: ground truth class 1 at voxel a only; prediction class 1 at voxels a and b
LABEL = torch.tensor([[[1], [0]], [[0], [0]]])
PRED = torch.tensor([[[1], [1]], [[0], [0]]])


def test_dice_by_hand_with_and_without_background():
    logits, label = one_hot_logits(PRED, 2), LABEL[None, None]
    # class 1: 2*1 / (2 + 1) -> loss 1/3; class 0: 2*2 / (2 + 3) -> loss 1/5
    with_bg = build_loss(tr(loss="dice", dice_smooth=0.0))(logits, label)
    assert float(with_bg) == pytest.approx((1 / 3 + 1 / 5) / 2, abs=1e-6)
    no_bg = build_loss(tr(loss="dice", dice_smooth=0.0, include_background=False))(logits, label)
    assert float(no_bg) == pytest.approx(1 / 3, abs=1e-6)
    smoothed = build_loss(tr(loss="dice", dice_smooth=1.0, include_background=False))(logits, label)
    assert float(smoothed) == pytest.approx(1 - (2 + 1) / (3 + 1), abs=1e-6)


def test_cross_entropy_by_hand():
    logits = torch.zeros(1, 3, 2, 2, 1)
    label = torch.zeros(1, 1, 2, 2, 1, dtype=torch.long)
    assert float(build_loss(tr(loss="ce"))(logits, label)) == pytest.approx(math.log(3), abs=1e-6)
    logits = torch.zeros(1, 2, 1, 1, 2)
    logits[0, 0, 0, 0, 0] = 2.0  # voxel 1: class 0 scores 2, truth 0; voxel 2: tie, truth 1
    label = torch.tensor([0, 1]).view(1, 1, 1, 1, 2)
    expected = (-math.log(math.e**2 / (math.e**2 + 1)) + math.log(2)) / 2
    assert float(build_loss(tr(loss="ce", ce_weight=1.0))(logits, label)) == pytest.approx(expected, abs=1e-6)
    assert float(build_loss(tr(loss="ce", ce_weight=0.5))(logits, label)) == pytest.approx(expected / 2, abs=1e-6)


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.3, 2.0), (0.0, 1.0)])
def test_combined_weights(alpha, beta):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, 3, generator=g)
    label = torch.randint(0, 3, (2, 1, 4, 4, 3), generator=g)
    loss = build_loss(tr(loss="dice_ce", ce_weight=alpha, dice_weight=beta, dice_smooth=1e-5))(logits, label)
    expected = alpha * F.cross_entropy(logits, label[:, 0]) + beta * hand_dice(logits, label, 1e-5, True)
    assert float(loss) == pytest.approx(float(expected), abs=1e-5)


def test_dice_focal_by_hand():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, 4, 3, 2, generator=g)
    label = torch.randint(0, 3, (1, 1, 4, 3, 2), generator=g)
    onehot = F.one_hot(label[:, 0], 3).movedim(-1, 1).float()
    # gamma 0: the focal term is the per-class binary cross-entropy on the logits (MONAI's sigmoid focal loss)
    loss = build_loss(tr(loss="dice_focal", focal_gamma=0.0, ce_weight=0.7, dice_weight=1.5))(logits, label)
    bce = F.binary_cross_entropy_with_logits(logits, onehot)
    assert float(loss) == pytest.approx(float(0.7 * bce + 1.5 * hand_dice(logits, label, 1e-5, True)), abs=1e-5)
    # gamma 2 down-weights confident voxels: strictly smaller focal term
    focal2 = build_loss(tr(loss="dice_focal", focal_gamma=2.0, dice_weight=0.0))(logits, label)
    assert 0 < float(focal2) < float(bce)


def test_default_loss_is_monai_dice_ce():
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 5, 4, 3, generator=g)
    label = torch.randint(0, 3, (2, 1, 5, 4, 3), generator=g)
    ours = build_loss(tr())(logits, label)
    assert torch.equal(ours, DiceCELoss(to_onehot_y=True, softmax=True)(logits, label))


def lrs(cfg: TrainingConfig, epochs: int) -> list[float]:
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg)
    out = []
    for _ in range(epochs + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_at_known_epochs():
    base = {"learning_rate": 1.0, "epochs": 10, "min_lr_ratio": 0.0}
    cos = lrs(tr(**base, schedule="cosine"), 10)
    assert cos[0] == pytest.approx(1.0) and cos[5] == pytest.approx(0.5) and cos[10] == pytest.approx(0.0, abs=1e-12)
    warm = lrs(tr(**base, schedule="cosine", warmup_epochs=2, warmup_start_ratio=0.1), 10)
    assert warm[:3] == pytest.approx([0.1, 0.55, 1.0])
    assert warm[6] == pytest.approx(0.5) and warm[10] == pytest.approx(0.0, abs=1e-12)  # cosine over 8 epochs
    step = lrs(tr(**base, schedule="step", step_size=3, step_gamma=0.1), 7)
    assert step == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])
    poly = lrs(tr(**base, schedule="poly", poly_power=0.9), 10)
    assert poly == pytest.approx([(1 - k / 10) ** 0.9 for k in range(11)])
    restarts = lrs(tr(**base, schedule="cosine_restarts", restart_epochs=4, restart_mult=2), 12)
    assert restarts[2] == pytest.approx(0.5) and restarts[4] == pytest.approx(1.0)  # restart after 4 epochs
    assert restarts[8] == pytest.approx(0.5) and restarts[12] == pytest.approx(1.0)  # then an 8-epoch cycle
    const = lrs(tr(**base, schedule="constant", warmup_epochs=1, warmup_start_ratio=0.5), 3)
    assert const == pytest.approx([0.5, 1.0, 1.0, 1.0])


def test_optimisers():
    p = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(p, tr(optimizer="sgd", momentum=0.9, weight_decay=1e-4, learning_rate=0.01))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-4
    assert type(build_optimizer(p, tr(optimizer="adam"))) is torch.optim.Adam
    adamw = build_optimizer(p, tr(optimizer="adamw", weight_decay=0.05))
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.05
    with pytest.raises(ValidationError, match="'rmsprop'; choose one of adam, adamw, sgd"):
        tr(optimizer="rmsprop")
    unchecked = tr().model_copy(update={"optimizer": "rmsprop"})  # past the schema: the registry still refuses
    with pytest.raises(MedsegError, match="adamw, adam, sgd"):
        build_optimizer(p, unchecked)


@pytest.mark.parametrize("key,value,known", [
    ("training.loss", "tversky", "ce, dice, dice_ce, dice_focal"),
    ("training.optimizer", "rmsprop", "adam, adamw, sgd"),
    ("training.schedule", "exp", "constant, cosine, cosine_restarts, poly, step"),
    ("training.amp", "fp8", "bf16, fp16, none"),
])
def test_unknown_names_are_one_line_with_the_known_ones(key, value, known, capsys):
    from medseg.train import main

    assert main(["liver", "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and known in err and value in err


def toy_trainer(loss_fn, n_iter: int, max_norm: float, accumulation: int = 1, lr: float = 1.0):
    """MONAI's SupervisedTrainer on a 4-weight linear 'network' with medseg's gradient guard attached."""
    from monai.engines import SupervisedTrainer

    from medseg.engine.optim import attach_gradient_guard

    net = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    data = [{"image": torch.ones(1, 4), "label": torch.zeros(1, 1)} for _ in range(n_iter)]
    trainer = SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=data, network=net, decollate=False,
                                optimizer=torch.optim.SGD(net.parameters(), lr=lr), loss_function=loss_fn,
                                accumulation_steps=accumulation)
    attach_gradient_guard(trainer, max_norm)
    return trainer, net


def test_gradient_clipping_and_accumulation():
    # loss = 100 * sum(w): gradient (100, 100, 100, 100), norm 200; one SGD step (lr 1) moves w by the gradient
    trainer, net = toy_trainer(lambda pred, label: 100 * pred.sum(), 1, max_norm=0.0)
    trainer.run()
    assert torch.allclose(net.weight, torch.full((1, 4), -100.0)) and trainer.state.grad_norm == pytest.approx(200)
    trainer, net = toy_trainer(lambda pred, label: 100 * pred.sum(), 1, max_norm=1.0)
    trainer.run()
    assert float(net.weight.norm()) == pytest.approx(1.0, rel=1e-5)  # clipped to norm 1
    # accumulation over 2 batches: one step with the mean gradient, clipped once, at the second batch
    trainer, net = toy_trainer(lambda pred, label: 100 * pred.sum(), 2, max_norm=1.0, accumulation=2)
    trainer.run()
    assert float(net.weight.norm()) == pytest.approx(1.0, rel=1e-5)
    trainer, net = toy_trainer(lambda pred, label: 100 * pred.sum(), 2, max_norm=0.0, accumulation=2, lr=0.5)
    trainer.run()
    assert torch.allclose(net.weight, torch.full((1, 4), -50.0))  # (100 + 100) / 2 per weight, lr 0.5


def test_non_finite_gradient_skips_the_step():
    # sqrt at 0: the loss is 0, its gradient infinite
    trainer, net = toy_trainer(lambda pred, label: torch.sqrt(pred - pred.detach()).sum(), 2, max_norm=0.0)
    trainer.run()
    assert torch.equal(net.weight, torch.zeros(1, 4)) and trainer.state.skipped_steps == 2


def test_bf16_autocast_forward_and_float32_output():
    from medseg.engine.precision import AutocastInferer, precision_arguments

    seen = []
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    inferer, amp_args = precision_arguments("bf16", torch.device("cpu"))
    assert isinstance(inferer, AutocastInferer) and amp_args == {}
    out = inferer(torch.rand(1, 1, 4, 4, 4), conv)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    with pytest.raises(MedsegError, match="fp16 needs a GPU"):
        precision_arguments("fp16", torch.device("cpu"))
    inferer, amp_args = precision_arguments("fp16", torch.device("cuda"))
    assert amp_args == {"amp": True, "amp_kwargs": {"dtype": torch.float16}}


def test_activation_checkpointing_keeps_outputs_gradients_and_keys():
    from monai.networks.nets import UNet

    from medseg.engine.precision import disable_activation_checkpointing, enable_activation_checkpointing

    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="instance")
    x = torch.rand(1, 1, 16, 16, 16)
    ref_out = net(x)
    ref_out.sum().backward()
    ref_grads = [p.grad.clone() for p in net.parameters()]
    keys = list(net.state_dict())
    net.zero_grad()
    enable_activation_checkpointing(net)
    assert sum("forward" in vars(m) for m in net.modules()) == 7  # 2 down, 1 bottom, 2 x (up-conv, residual)
    out = net(x)
    out.sum().backward()
    assert torch.allclose(out, ref_out, atol=1e-6) and list(net.state_dict()) == keys
    assert all(torch.allclose(g, p.grad, atol=1e-5) for g, p in zip(ref_grads, net.parameters()))
    disable_activation_checkpointing(net)
    assert sum("forward" in vars(m) for m in net.modules()) == 0
    scripted = torch.jit.script(net)  # TorchScript export works again, with the same outputs
    net.eval()
    scripted.eval()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
