"""MixUp and CutMix inside training runs: soft targets reach the loss, the training accuracy is
the mixed labels' expectation, resumed epochs mix alike, and bad settings are one line."""

from __future__ import annotations

import math

import pytest
import torch

from augpipe.training.run import train as run_train

MIX = {"mixup": {"alpha": 0.4, "p": 0.5}, "cutmix": {"alpha": 1.0, "p": 0.5}}


def _train(tmp_path, data, name, aug, **flags):
    # on the CPU, where the same seed gives the same numbers (a resumed epoch, bit for bit)
    settings = dict(
        data=str(data),
        plugin="cnn",
        model="cnn_small",
        epochs=2,
        batch_size=8,
        workers=0,
        threads=1,
        progress=False,
        out=str(tmp_path / "runs"),
        name=name,
        aug=aug,
        seed=3,
        device="cpu",
    )
    settings.update(flags)
    return run_train(**settings)


def test_a_mixed_run_trains_on_soft_targets_and_counts_fractional_accuracy(tmp_path, tiny_data, monkeypatch):
    seen = []
    original = torch.nn.CrossEntropyLoss.forward

    def spy(self, logits, target):
        seen.append(target.detach().clone())
        return original(self, logits, target)

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", spy)
    result = _train(tmp_path, tiny_data, "mix", {"size": 16, **MIX}, label_smoothing=0.1)
    soft = [t for t in seen if t.is_floating_point()]
    assert soft, "the training loss never saw class-probability targets"
    assert all(torch.allclose(t.sum(1), torch.ones(len(t), device=t.device)) for t in soft)
    assert any(((t > 0) & (t < 1)).any() for t in soft)  # some batch really was mixed
    # 30 training images: an accuracy counted in whole images is a multiple of 1/30
    accs = [e["train_acc"] for e in result.history.epochs]
    assert all(0 <= a <= 1 for a in accs)
    assert any(abs(a * 30 - round(a * 30)) > 1e-6 for a in accs)
    assert math.isfinite(result.summary["test_acc"])


def test_the_same_seed_mixes_the_same_way(tmp_path, tiny_data):
    a = _train(tmp_path, tiny_data, "a", {"size": 16, **MIX}, epochs=1)
    b = _train(tmp_path, tiny_data, "b", {"size": 16, **MIX}, epochs=1)
    assert a.history.iteration_losses == b.history.iteration_losses


def test_an_interrupted_mixed_epoch_resumes_exactly(tmp_path, tiny_data, stop_after_step):
    whole = _train(tmp_path, tiny_data, "whole", {"size": 16, **MIX}, epochs=2)
    with stop_after_step(2):  # a stop after step 2 of epoch 1
        stopped = _train(tmp_path, tiny_data, "part", {"size": 16, **MIX}, epochs=2)
    assert stopped.history.stop_reason == "interrupted"
    resumed = run_train(resume=str(tmp_path / "runs/part"), progress=False)
    assert resumed.history.iteration_losses == pytest.approx(whole.history.iteration_losses, abs=1e-6)
    assert [e["train_acc"] for e in resumed.history.epochs] == pytest.approx(
        [e["train_acc"] for e in whole.history.epochs]
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "1", "--aug-device", "cpu"], "--batch-size must be at least 2"),
        (["--aug-device", "gpu", "--device", "cpu"], "runs only in loader workers"),
    ],
)
def test_bad_mixing_and_policy_settings_are_one_line(cli, tiny_data, tmp_path, args, message):
    from conftest import error_line

    spec = tmp_path / "spec.yaml"
    if "gpu" in args:
        spec.write_text("size: 16\nrand_augment: {n: 2, m: 9}\n")
    else:
        spec.write_text("size: 16\nmixup: {alpha: 0.2}\n")
    line = error_line(
        cli("train", "--data", tiny_data, "--plugin", "cnn", "--aug", spec, *args, "--out", tmp_path / "runs")
    )
    assert message in line
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "text, message",
    [
        ("mixup: {alpha: 0}", "mixup.alpha must be a number > 0"),
        ("cutmix: {alpha: -1}", "cutmix.alpha must be a number > 0"),
        ("mixup: {p: 0.7}\ncutmix: {p: 0.7}", "mixup.p + cutmix.p must be at most 1"),
        ("auto_augment: cifar", "did you mean cifar10?"),
        ("rand_augment: {n: 0}", "rand_augment.n"),
        ("rand_augment: {m: 40}", "rand_augment.m must be a whole number in 0..30"),
        ("trivial_augmnt: {}", "did you mean 'trivial_augment'?"),
    ],
)
def test_bad_spec_entries_name_the_problem(cli, tiny_data, tmp_path, text, message):
    from conftest import error_line

    spec = tmp_path / "spec.yaml"
    spec.write_text(text + "\n")
    assert message in error_line(cli("train", "--data", tiny_data, "--aug", spec))


@pytest.mark.parametrize("preset", ["timm-a1", "cifar-modern"])
def test_the_modern_presets_train_and_their_pipeline_reloads(tmp_path, tiny_data, preset):
    from augpipe.augment.cpu import load_pipeline
    from augpipe.augment.spec import AugmentSpec

    spec = AugmentSpec.preset(preset).to_dict()
    spec["size"] = 16
    if preset == "cifar-modern":
        spec["translate"]["pad"] = 2
    result = _train(tmp_path, tiny_data, preset, spec, epochs=1)
    run = tmp_path / "runs" / preset
    names = [type(t).__name__ for t in load_pipeline(run / "augment.yaml").transforms]
    expected = "RandAugmentTransform" if preset == "timm-a1" else "TrivialAugmentWideTransform"
    assert expected in names
    assert math.isfinite(result.summary["test_acc"])


def test_preview_draws_policies_alone_and_mixed_batches(tmp_path, tiny_data):
    from augpipe.report import preview

    spec = {"size": 16, "rand_augment": {"n": 2, "m": 9}, "trivial_augment": True, "mixup": {"alpha": 0.2}}
    for per_transform in (False, True):
        out = preview(
            tiny_data, n=2, variants=2, aug=spec, out=tmp_path / f"p{per_transform}.png", per_transform=per_transform
        )
        assert out.stat().st_size > 1000
