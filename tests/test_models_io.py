"""Models in and out: starting weights (--weights, --pretrained), freezing and the backbone's
learning rate, augpipe.load and predict, export to ONNX and TorchScript."""

import csv
import logging

import numpy as np
import pytest
import torch

import augpipe
from augpipe.errors import ConfigError, DataError, PluginError
from tests.conftest import error_line

FAST = dict(
    epochs=1, val=0.2, test=0.2, threads=1, workers=0, aug="light", batch_size=8, plugin="cnn", model="cnn_small"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished cnn_small run on 3 classes of 32 px images: (run dir, data dir)."""
    from tests.conftest import _make_folder

    root = tmp_path_factory.mktemp("trained")
    data = _make_folder(root / "data", {"a": 15, "b": 15, "c": 15}, size=32)
    result = augpipe.train(data=str(data), out=str(root / "runs"), name="run", **FAST)
    return result.run_dir, data


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# -- augpipe.load and predict ------------------------------------------------------------------


def _test_images(run_dir, data):
    rows = [r for r in csv.reader(l for l in open(run_dir / "split.csv") if not l.startswith("#"))][1:]
    return [(data / key, label) for key, label, split in rows if split == "test"]


def test_load_scores_the_test_split_as_the_run_did(trained):
    run_dir, data = trained
    classifier = augpipe.load(run_dir)
    tests = _test_images(run_dir, data)
    top = classifier.predict([p for p, _ in tests], top_k=1)
    acc = np.mean([t[0][0] == label for t, (_, label) in zip(top, tests)])
    summary = augpipe.evaluate(run_dir)
    assert len(tests) == summary["n"] and acc == pytest.approx(summary["acc"])
    assert classifier.class_names == ["a", "b", "c"] and classifier.image_size == 32


def test_arrays_uint8_and_float_give_the_same_probabilities(trained):
    run_dir, data = trained
    classifier = augpipe.load(run_dir)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 40, 50, 3), dtype=np.uint8)  # resized and centre-cropped
    p_uint8 = classifier.probabilities(list(images))
    p_float = classifier.probabilities([im.astype(np.float32) / 255 for im in images])
    assert p_uint8.shape == (3, 3) and np.allclose(p_uint8.sum(1), 1, atol=1e-5)
    assert np.allclose(p_uint8, p_float, atol=1e-5)
    # Gray images work, batch size does not change the answer.
    gray = images[:, :, :, 0]
    assert np.allclose(
        classifier.probabilities(list(gray), batch_size=1),
        classifier.probabilities(list(gray), batch_size=3),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4, 2), dtype=np.uint8), "expected an image array"),
        (np.full((4, 4, 3), 2.0, dtype=np.float32), "float pixels must lie in"),
        (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN"),
        (np.full((4, 4, 3), 300, dtype=np.int32), "integer pixels"),
        (np.zeros((4, 4, 3), dtype=bool), "uint8 or float"),
    ],
)
def test_bad_arrays_are_named(trained, bad, message):
    with pytest.raises(DataError, match=message):
        augpipe.load(trained[0]).predict([bad])


def test_predict_command_table_csv_and_skipped_files(trained, cli, tmp_path):
    run_dir, data = trained
    folder = tmp_path / "new"
    for i, (path, _) in enumerate(_test_images(run_dir, data)[:4]):
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        (folder / "sub" / f"{i}.png").write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = cli("predict", run_dir, folder, "--top-k", "2", "--out", "p.csv")
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "broken.png" in result.output
    assert "4 image(s) labelled, 1 skipped" in result.output
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 4 and list(rows[0]) == ["path", "class_1", "probability_1", "class_2", "probability_2"]
    for r in rows:
        assert float(r["probability_1"]) >= float(r["probability_2"])
        assert {r["class_1"], r["class_2"]} <= {"a", "b", "c"}


def test_predict_bad_inputs_are_one_line(trained, cli, tmp_path):
    run_dir, _ = trained
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert "no images in this folder" in error_line(cli("predict", run_dir, tmp_path / "empty"))
    assert "no such file or folder" in error_line(cli("predict", run_dir, tmp_path / "nothing.png"))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert "no readable image" in error_line(cli("predict", run_dir, tmp_path / "bad.jpg"))
    assert "no such run directory" in error_line(cli("predict", tmp_path / "norun", tmp_path / "bad.jpg"))


# -- export --------------------------------------------------------------------------------------


def test_export_torchscript_takes_uint8_and_float_and_any_batch(trained, cli, tmp_path):
    run_dir, _ = trained
    result = cli("export", run_dir, "--format", "torchscript", "--out", "m.pt")
    assert result.exit_code == 0, result.output
    diff = float(result.output.split("against PyTorch ")[1].split()[0])
    assert diff < 1e-4 and "test split" in result.output
    module = torch.jit.load(str(tmp_path / "m.pt"))
    classifier = augpipe.load(run_dir)
    images = np.random.default_rng(1).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    expected = classifier.logits(list(images))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        assert np.allclose(module(x).numpy(), expected, atol=1e-4)
        assert np.allclose(module(x.float() / 255).numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("input_kind", ["uint8", "float"])
def test_export_onnx_runs_in_onnxruntime_with_any_batch(trained, cli, tmp_path, input_kind):
    ort = pytest.importorskip("onnxruntime")
    run_dir, _ = trained
    result = cli("export", run_dir, "--out", f"m-{input_kind}.onnx", "--input", input_kind)
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output
    assert float(result.output.split("against PyTorch ")[1].split()[0]) < 1e-4
    session = ort.InferenceSession(str(tmp_path / f"m-{input_kind}.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(2).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    x = x if input_kind == "uint8" else x.astype(np.float32) / 255
    got = session.run(["logits"], {"images": x})[0]
    assert got.shape == (3, 3)
    assert np.allclose(got, augpipe.load(run_dir).logits(list(images)), atol=1e-4)


def test_export_names_the_operation_onnx_can_not_take(tmp_path, probe_plugins):
    pytest.importorskip("onnx")
    from augpipe.export import WithNormalization, _write_onnx

    class Spectral(torch.nn.Module):
        def forward(self, x):
            return torch.fft.rfft2(x).abs().flatten(1)[:, :3]

    with pytest.raises(ConfigError, match=r"aten::fft_rfft2' is not supported"):
        _write_onnx(
            WithNormalization(Spectral(), [0.5] * 3, [0.5] * 3),
            torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
            tmp_path / "x.onnx",
            "run",
        )
    assert not (tmp_path / "x.onnx").exists()


def test_export_bad_settings(trained, cli, tmp_path):
    run_dir, _ = trained
    assert "is a directory" in error_line(cli("export", run_dir, "--out", tmp_path))
    assert "does not exist" in error_line(cli("export", run_dir, "--out", tmp_path / "no" / "m.onnx"))
    assert "no such run directory" in error_line(cli("export", tmp_path / "nothing"))


# -- starting weights ----------------------------------------------------------------------------


def test_weights_from_a_run_with_the_backbone_frozen(trained, tmp_path, make_folder, caplog, monkeypatch):
    """A new 2-class task from a 3-class run's weights: with the backbone frozen for the one
    epoch trained, every backbone weight is still the source's and the classifier is new."""
    run_dir, _ = trained
    caplog.set_level(logging.INFO, logger="augpipe")
    # a CLI test before this one set up the command line's logging, which stops propagation;
    # whether caplog still sees the records then depends on pytest's version
    monkeypatch.setattr(logging.getLogger("augpipe"), "propagate", True)
    data = make_folder(tmp_path / "two", {"x": 12, "y": 12}, size=32, seed=5)
    result = augpipe.train(
        data=str(data), out=str(tmp_path / "runs"), name="ft", weights=str(run_dir / "best.pt"), freeze_epochs=1, **FAST
    )
    source, tuned = _state(run_dir / "best.pt")["model"], _state(result.run_dir / "best.pt")["model"]
    head = {"9.weight", "9.bias"} if "9.weight" in source else None
    changed_shape = {k for k in source if source[k].shape != tuned[k].shape}
    assert changed_shape and all(tuned[k].shape[0] == 2 for k in changed_shape)
    params = dict(augpipe.load(result.run_dir).model.named_parameters())
    for k in params:
        if k not in changed_shape:
            assert torch.equal(source[k], tuned[k]), k
    assert head is None or changed_shape == head
    assert any("starts anew for 2 classes" in r.getMessage() for r in caplog.records)
    assert any("backbone frozen" in r.getMessage() for r in caplog.records)


def test_freezing_ends_after_its_epochs(trained, tmp_path, make_folder):
    run_dir, _ = trained
    data = make_folder(tmp_path / "two", {"x": 12, "y": 12}, size=32, seed=5)
    result = augpipe.train(
        data=str(data),
        out=str(tmp_path / "runs"),
        name="ft",
        weights=str(run_dir / "best.pt"),
        freeze_epochs=1,
        **{**FAST, "epochs": 2, "restore_best": False},
    )
    source, tuned = _state(run_dir / "best.pt")["model"], _state(result.run_dir / "last.pt")["model"]
    conv = next(k for k in source if k.endswith("weight") and source[k].ndim == 4)
    assert not torch.equal(source[conv], tuned[conv])


def test_weights_bring_their_normalisation_unless_the_spec_has_its_own(tmp_path, make_folder):
    data = make_folder(tmp_path / "d", {"x": 12, "y": 12}, size=32)
    spec = {"hflip": {"p": 0.5}, "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    first = augpipe.train(data=str(data), out=str(tmp_path / "runs"), name="a", **{**FAST, "aug": spec})
    second = augpipe.train(
        data=str(data), out=str(tmp_path / "runs"), name="b", weights=str(first.run_dir / "best.pt"), **FAST
    )
    assert augpipe.load(second.run_dir).mean == (0.5, 0.5, 0.5)
    own = {"hflip": {"p": 0.5}, "normalize": {"mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}}
    third = augpipe.train(
        data=str(data),
        out=str(tmp_path / "runs"),
        name="c",
        weights=str(first.run_dir / "best.pt"),
        **{**FAST, "aug": own},
    )
    assert augpipe.load(third.run_dir).mean == (0.4, 0.4, 0.4)


def test_timm_state_dict_in_safetensors_with_a_new_classifier(tmp_path, make_folder, caplog, monkeypatch):
    import timm
    from safetensors.torch import save_file

    caplog.set_level(logging.INFO, logger="augpipe")
    # a CLI test before this one set up the command line's logging, which stops propagation;
    # whether caplog still sees the records then depends on pytest's version
    monkeypatch.setattr(logging.getLogger("augpipe"), "propagate", True)
    source = timm.create_model("resnet10t", pretrained=False, num_classes=7)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    data = make_folder(tmp_path / "d", {"x": 10, "y": 10}, size=64)
    result = augpipe.train(
        data=str(data),
        out=str(tmp_path / "runs"),
        name="t",
        **{
            **FAST,
            "plugin": "timm",
            "model": "resnet10t",
            "image_size": 64,
            "weights": str(tmp_path / "w.safetensors"),
            "freeze_epochs": 1,
        },
    )
    tuned = _state(result.run_dir / "best.pt")["model"]
    assert torch.equal(tuned["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert tuned["fc.weight"].shape == (2, 512)
    assert any("classifier (fc.bias, fc.weight) starts anew" in r.getMessage() for r in caplog.records)


def test_weights_of_another_architecture_name_the_layers(trained, cli, tmp_path, make_folder):
    run_dir, _ = trained
    make_folder(tmp_path / "d", {"x": 10, "y": 10}, size=32)
    line = error_line(
        cli(
            "train",
            "--data",
            "d",
            "--plugin",
            "cnn",
            "--model",
            "cnn",
            "--epochs",
            "1",
            "--weights",
            run_dir / "best.pt",
        )
    )
    assert "the weights are for another architecture" in line and "of another shape" in line
    assert "in the file" in line and "in the model" in line
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in error_line(
        cli("train", "--data", "d", "--plugin", "cnn", "--weights", "junk.pt")
    )
    assert "no such file" in error_line(cli("train", "--data", "d", "--plugin", "cnn", "--weights", "none.pt"))
    assert "give one" in error_line(cli("train", "--data", "d", "--pretrained", "--weights", "junk.pt"))


def test_pretrained_where_weights_can_not_be_had(cli, tmp_path, make_folder, monkeypatch):
    from huggingface_hub import constants

    # As on a machine without network, without waiting for connection time-outs (the variable is
    # read when huggingface_hub is imported, which an earlier test may have done).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    make_folder(tmp_path / "d", {"x": 10, "y": 10}, size=32)
    line = error_line(
        cli("train", "--data", "d", "--plugin", "timm", "--model", "resnet10t", "--pretrained", "--epochs", "1")
    )
    assert "pretrained weights of 'resnet10t' can not be fetched" in line and "--weights FILE" in line
    assert "no pretrained weights" in error_line(cli("train", "--data", "d", "--plugin", "cnn", "--pretrained"))
    assert "CIFAR ResNet" in error_line(cli("train", "--data", "d", "--plugin", "resnet", "--pretrained"))


def test_backbone_learning_rate_scale_splits_the_groups():
    from augpipe.plugins.cnn import build_cnn
    from augpipe.training.finetune import classifier_parameter_names, scale_backbone_lr
    from augpipe.training.optim import OPTIMIZERS, onecycle

    model = build_cnn(model="cnn_small", num_classes=4, image_size=32, activation="relu", dropout=0.0)
    optimizer = OPTIMIZERS["adam"](model, lr=0.01, weight_decay=1e-4, momentum=None)
    head = classifier_parameter_names(model, 4)
    scale_backbone_lr(optimizer, model, head, 0.1)
    ids = {id(p): n for n, p in model.named_parameters()}
    seen = [ids[id(p)] for g in optimizer.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(ids.values())  # every parameter once
    for g in optimizer.param_groups:
        names = {ids[id(p)] for p in g["params"]}
        assert g["lr"] == pytest.approx(0.01 if names <= head else 0.001)
        assert names <= head or not names & head
    assert optimizer.param_groups[0]["lr"] == 0.01  # the logged rate is --lr

    class Cfg:
        warmup_epochs = 0

    onecycle(optimizer, config=Cfg(), steps_per_epoch=10, epochs=1)
    peaks = sorted({round(g["max_lr"], 6) for g in optimizer.param_groups})
    assert peaks == [0.001, 0.01]


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(freeze_epochs=-1), "--freeze-epochs"),
        (dict(backbone_lr_scale=-0.5), "--backbone-lr-scale"),
        (dict(weights=""), "--weights must be a file path"),
    ],
)
def test_bad_fine_tuning_settings(flags, message):
    from augpipe.training.run import build_config

    with pytest.raises(ConfigError, match=message):
        build_config(**flags)


def test_a_plugin_without_pretrained_weights(probe_plugins, tiny_data, tmp_path):
    plugins, _ = probe_plugins
    with pytest.raises(PluginError, match="trainer 'probe' has no pretrained weights"):
        augpipe.train(
            data=str(tiny_data), plugin="probe", pretrained=True, epochs=1, out=str(tmp_path), plugins=plugins
        )


def test_any_array_is_labelled_or_refused_with_augpipes_error(trained):
    """Property: whatever array a user hands to predict, the answer is probabilities or a
    DataError, never another exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import array_shapes, arrays

    classifier = augpipe.load(trained[0])
    dtypes = st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64, np.bool_])
    images = dtypes.flatmap(lambda dt: arrays(dt, array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6)))

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(images)
    def check(image):
        try:
            probs = classifier.probabilities([image])
        except DataError:
            return
        assert probs.shape == (1, 3) and np.isfinite(probs).all()

    check()
