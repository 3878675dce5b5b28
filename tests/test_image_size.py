"""The model decides the input size (as timm's models do), and the first epoch says how long it
will take."""

import logging

import pytest

from augpipe.errors import PluginError
from augpipe.hookspecs import Trainer


def _train(tmp_path, data, caplog, **flags):
    import augpipe

    caplog.set_level(logging.INFO, logger="augpipe")
    settings = dict(
        data=str(data),
        epochs=1,
        val=0.2,
        test=0.2,
        out=str(tmp_path / "runs"),
        threads=1,
        workers=0,
        aug="light",
        batch_size=4,
    )
    settings.update(flags)
    return augpipe.train(**settings)


def _size_line(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("image size:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_data_of_another_size_is_resized_to_the_models_size(tmp_path, make_folder, caplog):
    data = make_folder(tmp_path / "photos", {"a": 10, "b": 10}, size=48)
    result = _train(tmp_path, data, caplog, plugin="cnn", model="cnn_small")
    assert result.summary["image_size"] == 32
    line = _size_line(caplog)
    assert "32 px" in line and "what cnn/cnn_small is built for" in line and "48x48, resized" in line


def test_image_size_flag_and_spec_size_come_first(tmp_path, make_folder, caplog):
    data = make_folder(tmp_path / "photos", {"a": 10, "b": 10}, size=48)
    result = _train(tmp_path, data, caplog, plugin="cnn", model="cnn_small", image_size=40, name="flag")
    assert result.summary["image_size"] == 40
    assert "--image-size" in _size_line(caplog)
    caplog.clear()
    result = _train(
        tmp_path, data, caplog, plugin="cnn", model="cnn_small", name="spec", aug={"size": 24, "hflip": {"p": 0.5}}
    )
    assert result.summary["image_size"] == 24
    assert "the augmentation spec's size" in _size_line(caplog)


def test_a_trainer_that_names_no_size_trains_at_the_datas_size(tmp_path, make_folder, caplog, probe_plugins):
    plugins, _ = probe_plugins
    data = make_folder(tmp_path / "photos", {"a": 10, "b": 10}, size=20)
    result = _train(tmp_path, data, caplog, plugin="probe", plugins=plugins)
    assert result.summary["image_size"] == 20
    assert "the data's own size" in _size_line(caplog)


@pytest.mark.parametrize(
    "plugin, model, size",
    [
        ("cnn", "cnn", 32),
        ("mlp", "mlp", 32),
        ("squeezenet", "squeezenet1_1", 32),
        ("resnet", "resnet20", 32),
        ("resnet", "resnet10t", 176),
        ("resnet", "resnet18", 224),
        ("timm", "test_vit", 160),
    ],
)
def test_built_in_trainers_name_their_models_sizes(plugin, model, size):
    from augpipe.plugin_manager import get_plugins

    assert get_plugins().trainer(plugin).model_input_size(model) == size


@pytest.mark.parametrize("bad", [0, -3, 2.5, "32", True])
def test_a_trainer_giving_a_bad_size_is_named(bad):
    trainer = Trainer(name="odd", build_model=lambda **kw: None, input_size=lambda model: bad)
    with pytest.raises(PluginError, match="trainer 'odd' gave input size"):
        trainer.model_input_size("m")


def test_the_first_epoch_estimates_its_time(tmp_path, make_folder, caplog):
    # 16 training images (14 per class less 3 + 3) in batches of 2: 8 steps, enough to time steps 2-6.
    data = make_folder(tmp_path / "photos", {"a": 14, "b": 14}, size=32)
    _train(tmp_path, data, caplog, plugin="cnn", model="cnn_small", batch_size=2, epochs=2)
    estimates = [r.getMessage() for r in caplog.records if "timed over steps 2-6" in r.getMessage()]
    assert len(estimates) == 1, estimates  # the first epoch only
    assert estimates[0].startswith("epoch 1/2: about ") and "for 8 steps" in estimates[0]
