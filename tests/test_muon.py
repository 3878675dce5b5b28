"""--optimizer muon: Muon's step against a direct computation (and torch.optim.Muon where torch has
it), filter banks orthogonalised in their flattened form, the other parameters on torch's
nesterov SGD, training runs that learn and resume exactly, and bad settings as one line."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from augpipe.training.optim import MUON_LR_SCALE, OPTIMIZERS, Muon, orthogonalize, scale_norm_lr
from augpipe.training.run import train as run_train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

A, B, C = 3.4445, -4.7750, 2.0315  # Keller Jordan's coefficients, written out again


def newton_schulz(m: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The documented iteration, in float64, written independently of augpipe's."""
    x = m.double()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.t()
    x = x / (torch.linalg.matrix_norm(x) + 1e-7)
    for _ in range(steps):
        gram = torch.mm(x, x.t())
        x = A * x + torch.mm(B * gram + C * torch.mm(gram, gram), x)
    return x.t() if tall else x


def grads(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def muon_on(param, **settings):
    return Muon([{"params": [param], "muon": True}], **{"ns_dtype": "float32", **settings})


@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])  # wide, and tall: transposed, and scaled up
def test_muon_steps_are_the_direct_computation(shape):
    lr, mu, wd, scale = 0.1, 0.9, 0.01, 0.5
    p = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    opt = muon_on(p, lr=lr, momentum=mu, weight_decay=wd, muon_lr_scale=scale)
    expected, buffer = p.detach().double().clone(), torch.zeros(shape, dtype=torch.float64)
    rate = lr * scale
    for g in grads(shape, 3, seed=1):
        p.grad = g.clone()
        opt.step()
        buffer = mu * buffer + g.double()
        update = g.double() + mu * buffer  # nesterov
        expected = expected * (1 - rate * wd) - rate * math.sqrt(max(1.0, shape[0] / shape[1])) * newton_schulz(update)
    assert torch.allclose(p.detach().double(), expected, atol=2e-5), (p.detach().double() - expected).abs().max()
    assert torch.allclose(opt.state[p]["momentum_buffer"].double(), buffer, atol=1e-5)


def test_the_iteration_makes_the_singular_values_about_one():
    m = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    m[:, 0] *= 50  # one direction far stronger than the rest: orthogonalising evens them out
    s = torch.linalg.svdvals(orthogonalize(m, dtype=torch.float32))
    assert 0.6 < s.min() and s.max() < 1.25, s
    assert torch.allclose(orthogonalize(m, dtype=torch.float32).double(), newton_schulz(m), atol=1e-5)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")
def test_a_matrix_takes_torch_optim_muon_steps():
    # torch keeps its momentum as a running mean, (1 - mu) times ours: the same direction once
    # orthogonalised; both iterate in bfloat16, so they agree to its rounding.
    shape = (16, 24)
    ours = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    theirs = nn.Parameter(ours.detach().clone())
    opt = Muon([{"params": [ours], "muon": True}], lr=0.02, momentum=0.95, muon_lr_scale=1.0)
    reference = torch.optim.Muon([theirs], lr=0.02, momentum=0.95, weight_decay=0.0, nesterov=True)
    start = ours.detach().clone()
    for g in grads(shape, 3, seed=3):
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        reference.step()
    moved = (theirs.detach() - start).norm()
    assert moved > 0.1
    assert (ours.detach() - theirs.detach()).norm() < 0.03 * moved  # bfloat16 alone errs by 1-3 %


@pytest.mark.parametrize("ns_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (32, 2, 2, 2)])  # wide as (8, 27); tall as (32, 8)
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_filter_bank_is_orthogonalised_as_out_by_in_times_kernel(channels_last, shape, ns_dtype):
    lr, mu = 0.1, 0.8
    rows, cols = shape[0], math.prod(shape[1:])
    conv = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(4)))
    if channels_last:
        conv.data = conv.data.to(memory_format=torch.channels_last)
    start = conv.detach().clone()
    opt = muon_on(conv, lr=lr, momentum=mu, muon_lr_scale=1.0, ns_dtype=ns_dtype)
    g = grads(shape, 1, seed=5)[0]
    conv.grad = g.clone().to(memory_format=torch.channels_last) if channels_last else g.clone()
    opt.step()
    step = (conv.detach() - start).reshape(rows, cols) / -lr / math.sqrt(max(1.0, rows / cols))
    expected = newton_schulz(((1 + mu) * g).reshape(rows, cols))
    assert torch.allclose(step.double(), expected, atol=1e-5 if ns_dtype == "float32" else 0.05)
    s = torch.linalg.svdvals(step)
    assert 0.6 < s.min() and s.max() < 1.25  # orthogonal across all inputs x kernel, not per kernel


def tiny_convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=8),  # depthwise: one input channel per filter
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def test_the_matrices_take_muon_and_the_rest_takes_torch_nesterov_sgd():
    model = tiny_convnet()
    opt = OPTIMIZERS["muon"](model, lr=0.05, weight_decay=1e-3, momentum=0.9)
    on_muon = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
    assert on_muon == {id(model[0].weight), id(model[5].weight)}  # the head (model[7]) and depthwise filters not
    assert [g["lr"] for g in opt.param_groups] == [0.05] * len(opt.param_groups)  # Muon's 0.4x is inside its step
    assert all(g["muon_lr_scale"] == MUON_LR_SCALE for g in opt.param_groups)
    assert not opt.param_groups[0]["muon"]

    twin = tiny_convnet()
    plain = [(n, p) for n, p in twin.named_parameters() if id(dict(model.named_parameters())[n]) not in on_muon]
    reference = torch.optim.SGD(
        [
            {"params": [p for n, p in plain if p.ndim <= 1], "weight_decay": 0.0},
            {"params": [p for n, p in plain if p.ndim > 1], "weight_decay": 1e-3},
        ],
        lr=0.05,
        momentum=0.9,
        nesterov=True,
    )
    for step in range(3):
        for (n, p), q in zip(model.named_parameters(), twin.parameters()):
            p.grad = grads(p.shape, 1, seed=10 * step + len(n))[0]
            q.grad = p.grad.clone()
        opt.step()
        reference.step()
    for n, p in plain:
        assert torch.equal(dict(model.named_parameters())[n], p), n
    assert not torch.equal(model[0].weight, twin[0].weight)


def test_airbench_trains_its_convolutions_with_muon_and_its_head_and_biases_with_sgd():
    from augpipe.plugins.fastcifar import build_fastcifar

    torch.manual_seed(0)
    model = build_fastcifar(model="airbench", num_classes=10, image_size=32, activation="gelu", dropout=0.0)
    opt = OPTIMIZERS["muon"](model, lr=0.375, weight_decay=0.00133, momentum=0.85)
    names = {id(p): n for n, p in model.named_parameters()}
    on_muon = {names[id(p)] for g in opt.param_groups if g["muon"] for p in g["params"]}
    assert on_muon == {f"groups.{i}.conv{j}.weight" for i in range(3) for j in (1, 2)}
    # the fitted whitening filters are frozen: in no group at all
    assert sorted(names[id(p)] for g in opt.param_groups for p in g["params"]) == sorted(
        n for n, p in model.named_parameters() if p.requires_grad
    )


def test_a_model_that_names_its_classifier_keeps_it_off_muon():
    class Net(nn.Module):  # the head registered first: get_classifier(), not the order, decides
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(16, 5)
            self.body = nn.Linear(4, 16)

        def get_classifier(self):
            return self.head

        def forward(self, x):
            return self.head(self.body(x))

    model = Net()
    opt = OPTIMIZERS["muon"](model, lr=0.05, weight_decay=0.0, momentum=0.9)
    assert [p for g in opt.param_groups if g["muon"] for p in g["params"]] == [model.body.weight]


def test_schedules_and_norm_lr_scale_reach_both_parts_and_the_state_survives_a_checkpoint(tmp_path):
    model = tiny_convnet()
    opt = OPTIMIZERS["muon"](model, lr=0.05, weight_decay=1e-3, momentum=0.9)
    scale_norm_lr(opt, model, 4.0)
    norm = {id(p) for p in model[1].parameters()}
    for g in opt.param_groups:
        chosen = any(id(p) in norm for p in g["params"])
        assert g["lr"] == pytest.approx(0.2 if chosen else 0.05) and not (chosen and g["muon"])
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5)
    assert {g["lr"] for g in opt.param_groups if g["muon"]} == {0.025}

    x, y = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(6)), torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        schedule.step()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    twin = tiny_convnet()
    twin.load_state_dict(saved["model"])
    twin_opt = OPTIMIZERS["muon"](twin, lr=0.05, weight_decay=1e-3, momentum=0.9)
    scale_norm_lr(twin_opt, twin, 4.0)
    twin_opt.load_state_dict(saved["opt"])
    for m, o in ((model, opt), (twin, twin_opt)):
        for _ in range(2):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_muon_refuses_what_it_can_not_orthogonalise():
    with pytest.raises(ValueError, match="matrices and filters only.*\\(4,\\)"):
        Muon([{"params": [nn.Parameter(torch.zeros(4))], "muon": True}], lr=0.1)
    with pytest.raises(ValueError, match="ns_dtype"):
        Muon([nn.Parameter(torch.zeros(2, 2))], lr=0.1, ns_dtype="float16")


def _train(tmp_path, data, name, **flags):
    # on the CPU, where the same seed gives the same numbers (a resumed epoch, bit for bit)
    settings = dict(
        data=str(data),
        plugin="cnn",
        model="cnn_small",
        optimizer="muon",
        epochs=2,
        batch_size=8,
        workers=0,
        threads=1,
        progress=False,
        out=str(tmp_path / "runs"),
        name=name,
        aug={"size": 16},
        seed=3,
        device="cpu",
    )
    settings.update(flags)
    return run_train(**settings)


def test_a_muon_run_learns(tmp_path, tiny_data):
    result = _train(tmp_path, tiny_data, "learns", epochs=6, lr=0.1, scheduler="none")
    losses = result.history.iteration_losses
    assert all(math.isfinite(v) for v in losses)
    # 4 steps an epoch: the last epoch's mean loss well under the first's
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), losses


def test_an_interrupted_muon_run_resumes_exactly(tmp_path, tiny_data, stop_after_step):
    whole = _train(tmp_path, tiny_data, "whole")
    with stop_after_step(2):  # a stop after step 2 of epoch 1
        stopped = _train(tmp_path, tiny_data, "part")
    assert stopped.history.stop_reason == "interrupted"
    resumed = run_train(resume=str(tmp_path / "runs/part"), progress=False)
    assert resumed.history.iteration_losses == pytest.approx(whole.history.iteration_losses, abs=1e-6)
    assert len(whole.history.iteration_losses) == 8
    saved = torch.load(tmp_path / "runs/part/last.pt", weights_only=True)["optimizer"]
    assert [g["muon"] for g in saved["param_groups"]].count(True) == 1  # the convolutions did take Muon steps
    assert saved["state"]  # and their momentum buffers were what resumed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optimizer", "muon", "--momentum", "0"], "--optimizer muon needs a --momentum above 0"),
        (["--optimizer", "muonn"], "muon"),
    ],
)
def test_bad_muon_settings_are_one_line(cli, tiny_data, tmp_path, args, message):
    from conftest import error_line

    line = error_line(cli("train", "--data", tiny_data, "--plugin", "cnn", *args, "--out", tmp_path / "runs"))
    assert message in line
    assert not (tmp_path / "runs").exists()
