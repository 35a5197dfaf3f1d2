"""End-to-end training on a tiny model: run folder, resume equality, SIGKILL + resume, NaN handling, CLI."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from efficientdet.errors import TrainingStopped
from efficientdet.train.config import TrainConfig
from efficientdet.train.run_dir import next_run_dir, read_metrics
from efficientdet.train.step import train_step
from efficientdet.train.trainer import Trainer, train
from efficientdet.weights import load_checkpoint

from .conftest import cli_args, tiny_config


def _equal_states(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def run_a(tiny_data, tmp_path_factory):
    """2 epochs uninterrupted (with validation, plots, TensorBoard); also keeps the end-of-epoch-1 last.pt."""
    root = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(tiny_data, root / "a", plots=True, tensorboard=True)
    trainer = Trainer(cfg)
    epoch1 = root / "c" / "weights" / "last.pt"
    save_last = trainer.save_last

    def save_and_keep():
        path = save_last()
        if trainer.state.epoch == 1 and trainer.state.batch_in_epoch == 0:
            epoch1.parent.mkdir(parents=True)
            shutil.copy(path, epoch1)
        return path

    trainer.save_last = save_and_keep
    return trainer.run(), root


def test_run_folder(run_a) -> None:
    result, _ = run_a
    run = result.run_dir
    assert (run / "config.yaml").is_file()
    cfg = TrainConfig.load_yaml(run / "config.yaml")
    assert cfg.epochs == 2 and cfg.model_overrides["fpn_channels"] == 16
    last, best = load_checkpoint(run / "weights" / "last.pt"), load_checkpoint(run / "weights" / "best.pt")
    assert last.extra["train"]["epoch"] == 2 and last.extra["train"]["step"] == 4
    assert best.config["num_classes"] == 4 and best.labels.names == ("circle", "square", "triangle", "cross")
    assert set(best.extra["metrics"]) >= {"AP", "AP50"}
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    assert all(math.isfinite(r["loss"]) and 0 <= r["AP50"] <= 1 for r in rows)
    for name in ("loss.png", "ap.png", "pr_curve.png", "val_predictions.png"):
        assert (run / name).stat().st_size > 1000, name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert result.epochs_completed == 2 and result.nan_steps == 0


def test_resume_from_epoch_end_is_exact(run_a) -> None:
    result_a, root = run_a
    resumed = train(resume=root / "c")
    assert resumed.epochs_completed == 2 and resumed.step == result_a.step
    a, c = load_checkpoint(result_a.last), load_checkpoint(resumed.last)
    assert _equal_states(a.state_dict, c.state_dict) == []  # EMA weights
    assert _equal_states(a.extra["train"]["model"], c.extra["train"]["model"]) == []  # raw weights


def _file_version(path) -> tuple[int, int] | None:
    """(inode, mtime) of ``path``: changes with every atomic rewrite (checkpoints are renamed into place)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _wait_for_new_version(path, proc, previous, timeout: float = 120.0) -> tuple[tuple[int, int], float]:
    """Poll until ``path`` is rewritten (or first written); returns its new version and the time it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version = _file_version(path)
        if version is not None and version != previous:
            return version, time.monotonic()
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {path} was rewritten"
        time.sleep(0.005)
    raise AssertionError(f"{path} not rewritten within {timeout} s")


def test_sigkill_then_resume_is_exact(run_a, tiny_data, tmp_path) -> None:
    """SIGKILL a CLI run mid-way, check the kill landed before the run ended, resume, compare with run_a.

    The run has 2 epochs x 2 steps and checkpoints after every step. The kill comes a random fraction
    of one measured step after the second checkpoint, so it lands in step 3 (or while step 3's
    checkpoint is written) and never after step 4, whatever the machine's speed.
    """
    result_a, _ = run_a
    total_steps = result_a.step
    assert total_steps == 4
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "efficientdet", *cli_args(tiny_data, out, "--deterministic",
                                                           "--save-interval-steps", "1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "weights" / "last.pt"
    try:
        first, t1 = _wait_for_new_version(last, proc, None)  # after step 1
        _, t2 = _wait_for_new_version(last, proc, first)  # after step 2 (end of epoch 1)
        time.sleep(random.uniform(0.0, 0.5) * (t2 - t1))
        still_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert still_running and proc.returncode == -signal.SIGKILL, (proc.returncode, err.decode()[-2000:])
    killed_at = load_checkpoint(last).extra["train"]  # the last complete checkpoint survives the kill
    note = f"killed after step {killed_at['step']} (epoch {killed_at['epoch']}, batch {killed_at['batch_in_epoch']})"
    assert 2 <= killed_at["step"] < total_steps and killed_at["epoch"] < 2, note
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1.0], note  # epoch 2 never finished
    resumed = train(resume=out)
    assert resumed.step == total_steps and resumed.epochs_completed == 2, note
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1.0, 2.0], note  # the rest, once
    a, b = load_checkpoint(result_a.last), load_checkpoint(resumed.last)
    assert b.extra["train"]["step"] == total_steps and b.extra["train"]["epoch"] == 2, note
    assert _equal_states(a.state_dict, b.state_dict) == [], note
    assert _equal_states(a.extra["train"]["model"], b.extra["train"]["model"]) == [], note


def test_loss_decreases_on_a_fixed_batch(tiny_data, tmp_path) -> None:
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "r", val=False, warmup_epochs=0, lr=0.01,
                                  deterministic=False))
    trainer.sampler.set_epoch(0)
    images, targets = next(iter(trainer.loader))
    losses = []
    for _ in range(6):
        trainer.state.step = 0  # constant (peak) lr
        trainer.set_train_mode()
        losses.append(train_step(trainer.state, trainer.setup, images, targets)["loss"])
    assert losses[-1] < losses[0], losses


class _NanAt:
    """A loss that returns NaN on the given call numbers (0-based) and the real loss otherwise."""

    def __init__(self, loss_fn, calls):
        self.loss_fn, self.calls, self.n = loss_fn, calls, 0

    def __call__(self, *args):
        terms = self.loss_fn(*args)
        if self.calls is None or self.n in self.calls:
            terms = {k: v * float("nan") for k, v in terms.items()}
        self.n += 1
        return terms


def test_nan_step_is_skipped_and_counted(tiny_data, tmp_path) -> None:
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "r", val=False, max_nan_steps=2, deterministic=False))
    trainer.setup = dataclasses.replace(trainer.setup, loss_fn=_NanAt(trainer.setup.loss_fn, {1}))
    result = trainer.run()
    assert result.nan_steps == 1 and result.step == 4 and trainer.state.ema.updates == 3
    ckpt = load_checkpoint(result.last)
    assert all(torch.isfinite(v).all() for v in ckpt.state_dict.values() if v.is_floating_point())


def test_nan_streak_stops_without_saving(tiny_data, tmp_path) -> None:
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "r", val=False, max_nan_steps=2, deterministic=False))
    trainer.setup = dataclasses.replace(trainer.setup, loss_fn=_NanAt(trainer.setup.loss_fn, None))
    with pytest.raises(TrainingStopped, match="lower the lr"):
        trainer.run()
    assert not (tmp_path / "r" / "weights" / "last.pt").exists()
    assert trainer.state.nan_steps == 2 and trainer.state.ema.updates == 0


def test_next_run_dir(tmp_path) -> None:
    assert next_run_dir(tmp_path) == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp3").mkdir()
    assert next_run_dir(tmp_path) == tmp_path / "exp2"


@pytest.mark.parametrize(
    "change, expected",
    [
        (["--batch-size", "0"], "--batch-size: 0 must be a positive integer"),
        (["--epochs", "-1"], "--epochs: -1 must be a positive integer"),
        (["--image-size", "0"], "--image-size: 0 must be a positive integer"),
    ],
)
def test_cli_bad_values(tiny_data, tmp_path, capsys, change, expected) -> None:
    from efficientdet.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*cli_args(tiny_data, tmp_path / "r"), *change])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and expected in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_missing_annotations(tiny_data, tmp_path, capsys) -> None:
    from efficientdet.cli import main

    args = cli_args(tiny_data, tmp_path / "r")
    args[args.index("--train-annotations") + 1] = str(tmp_path / "nope.json")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope.json" in err[0]


def test_sigint_saves_and_tells_how_to_resume(tiny_data, tmp_path) -> None:
    out = tmp_path / "int"
    cmd = [sys.executable, "-m", "efficientdet", *cli_args(tiny_data, out, "--epochs", "50", "--workers", "1",
                                                           "--save-interval-steps", "1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = out / "weights" / "last.pt"
    deadline = time.time() + 60
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "resume with: efficientdet train --resume" in err and "Traceback" not in err
    state = load_checkpoint(last).extra["train"]
    assert 1 <= state["step"] < 100 and state["epoch"] < 50


def test_interrupted_run_still_writes_its_plots(tiny_data, tmp_path) -> None:
    # SIGINT after the first epoch's evaluation: last.pt is saved and the plots of what was done written
    import os

    cfg = tiny_config(tiny_data, tmp_path / "run", plots=True, epochs=3)
    trainer = Trainer(cfg)
    save_last = trainer.save_last

    def save_then_interrupt():
        path = save_last()
        if trainer.state.epoch == 1 and trainer.state.batch_in_epoch == 0 and trainer._stop_signal is None:
            os.kill(os.getpid(), signal.SIGINT)  # the trainer's handler turns it into a clean stop
        return path

    trainer.save_last = save_then_interrupt
    result = trainer.run()
    assert result.interrupted and result.epochs_completed < 3
    for name in ("loss.png", "ap.png", "pr_curve.png", "val_predictions.png"):
        assert (result.run_dir / name).stat().st_size > 1000, name
