"""Experiment loggers: a short fake run is logged, then read back with TensorBoard's own reader
(and its HParams plugin's backend, what the HParams view shows) and MLflow's client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from augpipe.errors import ConfigError
from augpipe.training import loggers as L

STEPS_PER_EPOCH = 5
EPOCHS = 2


def _step_values(step: int, lr: float) -> dict:
    return {"loss": 2.0 / step, "lr": lr * (1 - step / 20), "images_per_s": 100.0 + step}


def _epoch_metrics(epoch: int) -> dict:
    # As loop.fit makes them; epoch 1's images/s is NaN (no step timed) and must be skipped.
    return {
        "epoch": epoch,
        "train_loss": 1.5 / epoch,
        "train_acc": 0.3 * epoch,
        "val_loss": 1.4 / epoch,
        "val_acc": 0.25 * epoch,
        "lr": 0.1 / epoch,
        "seconds": 2.0 + epoch,
        "images_per_s": float("nan") if epoch == 1 else 250.0,
    }


def _image(h=20, w=30, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def fake_run(
    logger,
    *,
    lr=0.1,
    seed=0,
    status="FINISHED",
    steps=range(1, STEPS_PER_EPOCH * EPOCHS + 1),
    epochs=range(1, EPOCHS + 1),
    start=True,
    finish=True,
    close=True,
    test_acc=None,
):
    """start, one log_step per step, on_epoch_end at each epoch's last step, two images, finish."""
    if start:
        logger.start(
            {"plugin": "cnn", "lr": lr, "seed": seed, "aug": {"size": 32}, "milestones": [0.5]},
            {"plugin": "cnn", "lr": lr, "seed": seed, "pretrained": False, "patience": None},
        )
    for step in steps:
        logger.log_step(step, _step_values(step, lr))
        if step % STEPS_PER_EPOCH == 0 and step // STEPS_PER_EPOCH in epochs:
            logger.on_epoch_end(step // STEPS_PER_EPOCH, _epoch_metrics(step // STEPS_PER_EPOCH))
    if finish:
        logger.log_image("preview", _image(20, 30, seed))
        logger.log_image("confusion", _image(12, 16, seed + 1), step=2)
        logger.finish(
            {
                "test_acc": test_acc if test_acc is not None else 0.5 + lr,
                "test_loss": 0.7,
                "best_value": 0.7,
                "failed": False,
                "stop_reason": "completed",
            },
            status,
        )
    if close:
        logger.close()


# -- choosing loggers (no package needed) ----------------------------------------------------
def test_unknown_logger_suggests_the_closest():
    with pytest.raises(ConfigError) as err:
        L.check_loggers(["tensorbord"])
    msg = str(err.value)
    assert "Did you mean 'tensorboard'?" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="unknown logger 'wandb'"):
        L.check_loggers("mlflow,wandb")


@pytest.mark.parametrize("name, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_missing_package_is_one_line_naming_the_extra(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like to import
    with pytest.raises(ConfigError) as err:
        L.check_loggers([name])
    msg = str(err.value)
    assert msg == f"--logger {name} needs the {module} package: pip install 'augpipe[{name}]'"
    with pytest.raises(ConfigError, match=rf"pip install 'augpipe\[{name}\]'"):
        L.make_loggers([name], root="unused", run_name="r")


def test_check_loggers_normalises_names():
    for name in L.LOGGER_NAMES:
        if not L._installed(L._REQUIRES[name]):
            pytest.skip(f"{name} not installed")
    assert L.check_loggers(None) == ()
    assert L.check_loggers(" MLflow, tensorboard,mlflow ,") == ("mlflow", "tensorboard")


def test_values_kept_and_skipped():
    torch = pytest.importorskip("torch")
    got = L.finite_scalars(
        {
            "a": 1,
            "b": np.float32(0.5),
            "c": torch.tensor(2.0),
            "nan": float("nan"),
            "inf": float("inf"),
            "flag": True,
            "none": None,
            "text": "x",
            "vec": [1.0],
        }
    )
    assert got == {"a": 1.0, "b": 0.5, "c": 2.0}
    hp = L.hparams_from_config(
        {
            "plugin": "cnn",
            "lr": 0.1,
            "aug": {"size": 32},
            "out": "runs",
            "seed": 3,
            "patience": None,
            "milestones": [0.5],
            "pretrained": False,
        }
    )
    assert hp == {"plugin": "cnn", "lr": 0.1, "aug": "custom", "seed": 3, "pretrained": False}


# -- TensorBoard -----------------------------------------------------------------------------
def _accumulator(run_dir):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(run_dir), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def hparams_view(logdir):
    """What TensorBoard's HParams view is given: the experiment (hparam and metric columns) and
    one row (session group) per run, through the plugin's own request handlers."""
    from tensorboard import context
    from tensorboard.backend.event_processing import (
        data_provider,
        plugin_event_multiplexer,
    )
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import (
        api_pb2,
        backend_context,
        get_experiment,
        list_session_groups,
    )

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(
        logdir=str(logdir), multiplexer=mux, data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir))
    )
    ctx = backend_context.Context(tb)
    request = context.RequestContext()
    experiment = get_experiment.Handler(request, ctx, "", api_pb2.GetExperimentRequest(include_metrics=True)).run()
    groups = list_session_groups.Handler(
        request,
        ctx,
        "",
        api_pb2.ListSessionGroupsRequest(
            start_index=0,
            slice_size=100,
            allowed_statuses=[
                api_pb2.STATUS_UNKNOWN,
                api_pb2.STATUS_SUCCESS,
                api_pb2.STATUS_FAILURE,
                api_pb2.STATUS_RUNNING,
            ],
            col_params=[api_pb2.ColParams(hparam=h.name) for h in experiment.hparam_infos]
            + [api_pb2.ColParams(metric=m.name) for m in experiment.metric_infos],
        ),
    ).run()
    rows = {}
    for group in groups.session_groups:
        hp = {k: (v.WhichOneof("kind"), getattr(v, v.WhichOneof("kind"))) for k, v in group.hparams.items()}
        metrics = {m.name.tag: m.value for m in group.metric_values}
        statuses = [s.status for s in group.sessions]
        rows[group.name] = {"hparams": hp, "metrics": metrics, "status": statuses}
    return experiment, rows


def test_tensorboard_fake_run_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.plugins.hparams import api_pb2

    (logger,) = L.make_loggers(["tensorboard"], root=tmp_path, run_name="run-1")
    fake_run(logger, lr=0.1)
    run_dir = tmp_path / "tensorboard" / "run-1"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    acc = _accumulator(run_dir)
    tags = acc.Tags()
    assert set(tags["scalars"]) == {
        "iteration/loss",
        "iteration/lr",
        "iteration/images_per_s",
        "epoch/train_loss",
        "epoch/train_acc",
        "epoch/val_loss",
        "epoch/val_acc",
        "epoch/lr",
        "epoch/seconds",
        "epoch/images_per_s",
        "final/test_acc",
        "final/test_loss",
        "final/best_value",
    }
    steps = range(1, 11)
    assert _scalars(acc, "iteration/loss") == [(s, pytest.approx(2.0 / s, rel=1e-6)) for s in steps]
    assert _scalars(acc, "iteration/lr") == [(s, pytest.approx(0.1 * (1 - s / 20), rel=1e-6)) for s in steps]
    assert _scalars(acc, "epoch/val_acc") == [(1, 0.25), (2, 0.5)]
    assert _scalars(acc, "epoch/images_per_s") == [(2, 250.0)]  # epoch 1's NaN skipped
    assert _scalars(acc, "final/test_acc") == [(2, pytest.approx(0.6))]

    # Images: PNG, so the pixels come back exactly, in RGB order.
    import cv2

    assert set(tags["images"]) == {"preview", "confusion"}
    (preview,), (confusion,) = acc.Images("preview"), acc.Images("confusion")
    assert (preview.width, preview.height, preview.step) == (30, 20, 0)
    assert (confusion.width, confusion.height, confusion.step) == (16, 12, 2)
    decoded = cv2.imdecode(np.frombuffer(preview.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(decoded, _image(20, 30, 0))
    assert "plugin: cnn" in acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()

    experiment, rows = hparams_view(tmp_path / "tensorboard")
    assert {h.name for h in experiment.hparam_infos} == {"plugin", "lr", "seed", "pretrained"}  # None left out
    assert {m.name.tag for m in experiment.metric_infos} >= {"final/test_acc", "final/test_loss", "epoch/val_acc"}
    (row,) = rows.values()
    assert row["hparams"] == {
        "plugin": ("string_value", "cnn"),
        "lr": ("number_value", 0.1),
        "seed": ("number_value", 0.0),
        "pretrained": ("string_value", "False"),
    }
    assert row["metrics"]["final/test_acc"] == pytest.approx(0.6)
    assert row["metrics"]["epoch/val_acc"] == pytest.approx(0.5)
    assert row["status"] == [api_pb2.STATUS_SUCCESS]


def test_tensorboard_failed_run_status(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.plugins.hparams import api_pb2

    (logger,) = L.make_loggers(["tensorboard"], root=tmp_path, run_name="bad")
    fake_run(logger, status="FAILED")
    _, rows = hparams_view(tmp_path / "tensorboard")
    assert [r["status"] for r in rows.values()] == [[api_pb2.STATUS_FAILURE]]


def test_tensorboard_resume_continues_the_directory_and_drops_redone_steps(tmp_path):
    """A run killed mid-epoch 2 (SIGKILL: no finish) resumes from the end of epoch 1: steps 6-8
    that the dead process logged are redone, and TensorBoard shows only the new ones."""
    pytest.importorskip("tensorboard")
    (first,) = L.make_loggers(["tensorboard"], root=tmp_path, run_name="r")
    fake_run(first, steps=range(1, 6), finish=False, close=False)
    saved = first.state_dict()  # what last.pt holds after epoch 1
    for step in (6, 7, 8):  # logged, then the process dies
        first.log_step(step, {"loss": 99.0})
    first.close()

    (second,) = L.make_loggers(["tensorboard"], root=tmp_path, run_name="r")
    second.load_state_dict(saved)
    fake_run(second, steps=range(6, 11), epochs=[2])
    run_dir = tmp_path / "tensorboard" / "r"
    assert saved["log_dir"] == str(run_dir)
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # the first file kept, not removed as stale
    acc = _accumulator(run_dir)
    assert _scalars(acc, "iteration/loss") == [(s, pytest.approx(2.0 / s, rel=1e-6)) for s in range(1, 11)]
    assert _scalars(acc, "epoch/val_acc") == [(1, 0.25), (2, 0.5)]
    _, rows = hparams_view(tmp_path / "tensorboard")
    (row,) = rows.values()
    assert row["hparams"]["lr"] == ("number_value", 0.1)
    assert row["metrics"]["final/test_acc"] == pytest.approx(0.6)


def test_tensorboard_fresh_run_drops_a_removed_runs_events(tmp_path):
    pytest.importorskip("tensorboard")
    (old,) = L.make_loggers(["tensorboard"], root=tmp_path, run_name="r")
    fake_run(old, lr=0.5)
    (new,) = L.make_loggers(["tensorboard"], root=tmp_path, run_name="r")  # same name, not resumed
    fake_run(new, lr=0.1)
    acc = _accumulator(tmp_path / "tensorboard" / "r")
    assert _scalars(acc, "final/test_acc") == [(2, pytest.approx(0.6))]
    _, rows = hparams_view(tmp_path / "tensorboard")
    assert [r["hparams"]["lr"] for r in rows.values()] == [("number_value", 0.1)]


# -- MLflow ----------------------------------------------------------------------------------
@pytest.fixture
def mlflow_env(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in ("MLFLOW_DISABLE_TELEMETRY", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.setenv(var, os.environ.get(var, "true"))  # what the logger sets, undone after the test


def _client(root):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=(Path(root).absolute() / "mlruns").as_uri())


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_mlflow_fake_run_reads_back(tmp_path, mlflow_env):
    import cv2

    (logger,) = L.make_loggers(["mlflow"], root=tmp_path, run_name="run-1")
    fake_run(logger, lr=0.1)
    assert logger.tracking_uri == (tmp_path / "mlruns").as_uri()
    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("augpipe")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == logger.run_id and run.info.run_name == "run-1"
    assert run.info.status == "FINISHED"
    assert run.data.params == {"plugin": "cnn", "lr": "0.1", "seed": "0", "pretrained": "False"}
    assert _history(client, run.info.run_id, "iteration/loss") == [(s, pytest.approx(2.0 / s)) for s in range(1, 11)]
    assert _history(client, run.info.run_id, "epoch/val_acc") == [(1, 0.25), (2, 0.5)]
    assert _history(client, run.info.run_id, "epoch/images_per_s") == [(2, 250.0)]
    assert run.data.metrics["final/test_acc"] == pytest.approx(0.6)
    assert "final/failed" not in run.data.metrics
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert sorted(images) == ["images/confusion_step2.png", "images/preview.png"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "images"}
    local = client.download_artifacts(run.info.run_id, "images/preview.png", str(tmp_path / "dl"))
    np.testing.assert_array_equal(cv2.imread(local)[:, :, ::-1], _image(20, 30, 0))
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "dl"))
    assert "plugin: cnn" in Path(config).read_text()


def test_mlflow_database_store_without_its_driver_is_one_line(tmp_path, mlflow_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(ConfigError) as err:
        (logger,) = L.make_loggers(["mlflow"], root=tmp_path, run_name="r", tracking_uri=uri)
        logger.start({}, {})
    msg = str(err.value)
    assert msg.startswith(f"MLflow can not use the tracking URI {uri} (") and "\n" not in msg
    assert msg.endswith("a database store needs SQLAlchemy: pip install mlflow")


def test_mlflow_logs_a_png_file_as_it_is(tmp_path, mlflow_env):
    import cv2

    png = tmp_path / "confusion.png"
    cv2.imwrite(str(png), _image(8, 9, 3))
    (logger,) = L.make_loggers(["mlflow"], root=tmp_path, run_name="r")
    logger.start({}, {})
    logger.log_image("confusion", png)
    logger.finish({}, "KILLED")
    client = _client(tmp_path)
    local = client.download_artifacts(logger.run_id, "images/confusion.png", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == png.read_bytes()
    assert client.get_run(logger.run_id).info.status == "KILLED"


def test_mlflow_resume_continues_the_same_run(tmp_path, mlflow_env):
    (first,) = L.make_loggers(["mlflow"], root=tmp_path, run_name="r")
    fake_run(first, steps=range(1, 6), finish=False)
    saved = first.state_dict()
    first.finish({}, "KILLED")  # interrupted by a signal: last.pt holds `saved`
    client = _client(tmp_path)
    assert client.get_run(saved["run_id"]).info.status == "KILLED"

    (second,) = L.make_loggers(["mlflow"], root=tmp_path, run_name="r")
    second.load_state_dict(saved)
    second.start({"plugin": "cnn"}, {"plugin": "cnn", "lr": 0.2})  # a resumed run does not log params again
    assert second.run_id == saved["run_id"]
    assert client.get_run(saved["run_id"]).info.status == "RUNNING"
    fake_run(second, steps=range(6, 11), epochs=[2], start=False)
    (run,) = client.search_runs([client.get_experiment_by_name("augpipe").experiment_id])
    assert run.info.run_id == saved["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.1"
    assert _history(client, run.info.run_id, "iteration/loss") == [(s, pytest.approx(2.0 / s)) for s in range(1, 11)]
    assert _history(client, run.info.run_id, "epoch/val_acc") == [(1, 0.25), (2, 0.5)]


def test_mlflow_resume_of_a_run_no_longer_in_the_store_starts_a_new_one(tmp_path, mlflow_env, caplog):
    (logger,) = L.make_loggers(["mlflow"], root=tmp_path, run_name="r")
    logger.load_state_dict({"step": 5, "epoch": 1, "run_id": "0123456789abcdef0123456789abcdef"})
    with caplog.at_level("WARNING", logger="augpipe"):
        fake_run(logger, steps=range(6, 11), epochs=[2])
    assert "not in" in caplog.text and logger.run_id != "0123456789abcdef0123456789abcdef"
    client = _client(tmp_path)
    assert client.get_run(logger.run_id).info.status == "FINISHED"


def test_a_backend_failing_mid_run_is_one_warning_and_the_run_goes_on(tmp_path, mlflow_env, caplog):
    import shutil

    (logger,) = L.make_loggers(["mlflow"], root=tmp_path, run_name="r")
    fake_run(logger, steps=range(1, 6), epochs=[1], finish=False, close=False)
    shutil.rmtree(tmp_path / "mlruns")  # the store is gone (a deleted folder, a server down)
    with caplog.at_level("WARNING", logger="augpipe"):
        fake_run(logger, steps=range(6, 11), epochs=[2], start=False)
    warnings = [r for r in caplog.records if "mlflow logging failed" in r.getMessage()]
    assert len(warnings) == 1 and "metrics.csv" in warnings[0].getMessage()
    assert logger.broken and logger.finished


def test_mlflow_state_survives_a_weights_only_checkpoint(tmp_path, mlflow_env):
    torch = pytest.importorskip("torch")
    pytest.importorskip("tensorboard")
    made = L.make_loggers(["tensorboard", "mlflow"], root=tmp_path, run_name="r")
    for logger in made:
        fake_run(logger, steps=range(1, 6), finish=False)
    torch.save({"loggers": {lg.name: lg.state_dict() for lg in made}}, tmp_path / "last.pt")
    state = torch.load(tmp_path / "last.pt", weights_only=True)["loggers"]
    assert state["mlflow"]["run_id"] == made[1].run_id and state["tensorboard"]["step"] == 5


# -- a sweep: three runs into one root -------------------------------------------------------
def test_three_runs_one_tensorboard_directory_one_mlflow_experiment(tmp_path, mlflow_env):
    pytest.importorskip("tensorboard")
    lrs = {"lr=0.1": 0.1, "lr=0.01": 0.01, "lr=0.001": 0.001}
    for run_name, lr in lrs.items():
        for logger in L.make_loggers(
            ["tensorboard", "mlflow"], root=tmp_path, run_name=run_name, experiment="lr-sweep"
        ):
            fake_run(logger, lr=lr, test_acc=lr * 5)
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == sorted(lrs)
    experiment, rows = hparams_view(tmp_path / "tensorboard")
    assert {h.name for h in experiment.hparam_infos} == {"plugin", "lr", "seed", "pretrained"}
    assert len(rows) == 3
    by_lr = {row["hparams"]["lr"][1]: row["metrics"]["final/test_acc"] for row in rows.values()}
    assert by_lr == {lr: pytest.approx(lr * 5) for lr in lrs.values()}

    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("lr-sweep")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(lrs)
    assert {r.data.params["lr"]: r.data.metrics["final/test_acc"] for r in runs} == {
        str(lr): pytest.approx(lr * 5) for lr in lrs.values()
    }
    assert client.get_experiment_by_name("augpipe") is None


# -- nothing leaves the run's folder ---------------------------------------------------------
SCRIPT = """
import atexit, json, socket, sys
attempts = []
def report():
    print(json.dumps(attempts))
atexit.register(report)  # registered first: runs after mlflow's own exit handlers
real_connect = socket.socket.connect
def connect(self, address):
    attempts.append(repr(address))
    raise OSError("network blocked by the test")
socket.socket.connect = connect
import numpy as np
from augpipe.training.loggers import make_loggers
(logger,) = make_loggers(["mlflow"], root=sys.argv[1], run_name="r")
logger.start({"lr": 0.1}, {"lr": 0.1})
for step in range(1, 4):
    logger.log_step(step, {"loss": 1.0 / step})
logger.on_epoch_end(1, {"epoch": 1, "val_acc": 0.5})
logger.log_image("preview", np.zeros((4, 4, 3), np.uint8))
logger.finish({"test_acc": 0.5})
logger.close()
"""


def test_mlflow_sends_nothing_and_leaves_home_alone(tmp_path):
    """Outside pytest (MLflow turns telemetry off by itself under pytest and CI), with the home
    folder empty: nothing is written there (MLflow's telemetry would write
    ~/.config/mlflow/telemetry.json) and no connection is attempted."""
    pytest.importorskip("mlflow")
    home = tmp_path / "home"
    home.mkdir()
    ci_vars = {
        "PYTEST_CURRENT_TEST",
        "CI",
        "GITHUB_ACTIONS",
        "GITLAB_CI",
        "JENKINS_URL",
        "BUILDKITE",
        "TF_BUILD",
        "CIRCLECI",
        "TRAVIS",
        "TEAMCITY_VERSION",
        "BITBUCKET_BUILD_NUMBER",
        "CODEBUILD_BUILD_ARN",
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ci_vars
        and not k.startswith("MLFLOW_")
        and k not in ("DO_NOT_TRACK", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")
    }
    env.update(HOME=str(home), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert list(home.rglob("*")) == []
    assert (tmp_path / "out" / "mlruns").is_dir()


# -- through augpipe train and augpipe sweep --------------------------------------------------------
TRAIN = [
    "--plugin",
    "mlp",
    "--model",
    "mlp_small",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--threads",
    "1",
    "--aug",
    "light",
    "--epochs",
    "2",
]


def test_augpipe_train_logs_steps_epochs_hparams_and_images_to_tensorboard(cli, tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    result = cli("train", "--data", tiny_data, "--name", "t", "--logger", "tensorboard", *TRAIN)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs/t/summary.json").read_text())
    acc = _accumulator(tmp_path / "runs/tensorboard/t")
    steps = len(_scalars(acc, "iteration/loss"))
    assert steps == 2 * 4  # 30 training images in batches of 8, 2 epochs
    assert [s for s, _ in _scalars(acc, "iteration/loss")] == list(range(1, steps + 1))
    # The per-step losses are the ones the run recorded (its curves come from the same list).
    state = torch_load(tmp_path / "runs/t/last.pt")
    assert [round(v, 5) for _, v in _scalars(acc, "iteration/loss")] == [
        round(v, 5) for v in state["history"]["iteration_losses"]
    ]
    assert [s for s, _ in _scalars(acc, "epoch/val_acc")] == [1, 2]
    assert _scalars(acc, "final/test_acc")[0][1] == pytest.approx(summary["test_acc"])
    images = acc.Tags()["images"]
    assert "preview" in images and "confusion" in images
    preview = acc.Images("preview")[0]
    assert (preview.width, preview.height) == (7 * 34, min(8, 30) * 34)  # 8 rows x (original + 6), 32 px + border
    experiment, rows = hparams_view(tmp_path / "runs/tensorboard")
    assert list(rows) and rows[next(iter(rows))]["hparams"]["plugin"] == ("string_value", "mlp")


def torch_load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_sweep_lands_in_one_tensorboard_directory_and_one_mlflow_experiment(cli, tiny_data, tmp_path, mlflow_env):
    pytest.importorskip("tensorboard")
    result = cli(
        "sweep",
        "--data",
        tiny_data,
        "--name",
        "lrs",
        "--lr",
        "0.001,0.01,0.1",
        "--logger",
        "tensorboard",
        "--logger",
        "mlflow",
        *TRAIN[:-1],
        "1",
    )
    assert result.exit_code == 0, result.output
    sweep = tmp_path / "sweeps/lrs"
    runs = sorted(p.name for p in (sweep / "tensorboard").iterdir())
    assert runs == ["lr=0.001,seed=0", "lr=0.01,seed=0", "lr=0.1,seed=0"]
    experiment, rows = hparams_view(sweep / "tensorboard")
    assert sorted(r["hparams"]["lr"][1] for r in rows.values()) == [0.001, 0.01, 0.1]
    assert all(r["metrics"].get("final/test_acc") is not None for r in rows.values())
    client = _client(sweep)
    found = client.get_experiment_by_name("lrs")
    mlruns = client.search_runs([found.experiment_id])
    assert sorted(r.info.run_name for r in mlruns) == runs
    assert {r.info.status for r in mlruns} == {"FINISHED"}
    assert sorted(float(r.data.params["lr"]) for r in mlruns) == [0.001, 0.01, 0.1]


def test_a_misspelt_logger_is_one_error_line_before_anything_is_written(cli, tiny_data, tmp_path):
    from conftest import error_line

    line = error_line(cli("train", "--data", tiny_data, "--logger", "tensorbord", *TRAIN))
    assert "unknown logger 'tensorbord'" in line and "tensorboard" in line
    assert not (tmp_path / "runs").exists()
