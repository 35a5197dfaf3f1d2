"""Training on one's own data with the defaults: recipe, anchors, pictures, accumulation, the anchors command."""

from __future__ import annotations

import copy

import pytest
import torch

from efficientdet.train.config import TrainConfig

from .conftest import TINY, tiny_config


def test_recipe_fills_only_unset_fields():
    base = TrainConfig("imgs", "ann.json", epochs=10, batch_size=8)
    assert base.lr is None and base.optimizer is None  # "from the recipe"
    cfg, recipe = base.resolve(800)
    assert (cfg.optimizer, cfg.lr, cfg.scale_min, cfg.scale_max) == ("adamw", 1e-2, 0.6, 1.4)
    assert recipe.name == "auto" and base.explicit() == []
    given = TrainConfig("imgs", "ann.json", epochs=10, batch_size=8, lr=5e-3, scale_max=2.0)
    cfg, _ = given.resolve(800)
    assert (cfg.optimizer, cfg.lr, cfg.scale_min, cfg.scale_max) == ("adamw", 5e-3, 0.6, 2.0)
    assert given.explicit() == ["lr", "scale_max"]
    official, _ = TrainConfig("imgs", "ann.json", batch_size=16, recipe="official").resolve(800)
    assert (official.optimizer, official.lr, official.ema_decay, official.scale_min) == ("sgd", 0.02, 0.9998, 0.1)


@pytest.fixture(scope="module")
def default_run(tiny_data, tmp_path_factory):
    """A tiny run with train's own defaults (recipe auto, anchors auto), plots on, 2 micro-batches."""
    import contextlib
    import io

    from efficientdet.train.trainer import train

    out = tmp_path_factory.mktemp("custom") / "run"
    cfg = TrainConfig(
        train_images=str(tiny_data["train_images"]), train_annotations=str(tiny_data["train_annotations"]),
        val_images=str(tiny_data["val_images"]), val_annotations=str(tiny_data["val_annotations"]),
        image_size=128, model_overrides=dict(TINY), epochs=2, batch_size=4, accumulate=2, amp=False, workers=0,
        out=str(out), progress=False, tensorboard=False, plots=True)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        result = train(cfg)
    return result, err.getvalue()


def test_default_run_records_recipe_and_fitted_anchors(default_run):
    from efficientdet.anchors import anchors_for
    from efficientdet.factory import create_model
    from efficientdet.weights import load_checkpoint

    result, err = default_run
    assert "recipe auto: adamw lr 0.00707" in err  # 1e-2 x sqrt(batch 4 / 8)
    assert "anchors:" in err and "training boxes have an anchor" in err
    saved = TrainConfig.load_yaml(result.run_dir / "config.yaml")
    assert (saved.recipe, saved.optimizer, saved.lr, saved.accumulate) == ("auto", "adamw", 0.007071, 2)
    assert saved.ema_decay is not None and saved.scale_min == 0.6  # resolved values, not None
    # 10-40 px shapes at 128 px: D0's 32 px smallest anchor is too coarse, so anchors auto changed them
    assert "anchors auto: anchor_scale" in err
    scale = saved.model_overrides["anchor_scale"]
    assert scale < 4.0
    ckpt = load_checkpoint(result.last)
    assert ckpt.config["anchor_scale"] == scale
    model = create_model(None, weights=result.last)  # what predict / eval / export / deploy do
    assert model.config.anchor_scale == scale
    assert not torch.equal(anchors_for(model.config), anchors_for(model.config.replace(anchor_scale=4.0)))


def test_default_run_pictures_and_quiet_terminal(default_run):
    from PIL import Image

    result, err = default_run
    for name in ("train_batch.png", "labels.png", "loss.png", "ap.png", "pr_curve.png"):
        assert Image.open(result.run_dir / name).size[0] > 100, name
    assert "Warning" not in err and "No artists" not in err


def test_accumulation_gives_the_same_step(tiny_data, tmp_path):
    """Two micro-batches give the same update as the whole batch (BN frozen, so statistics play no part)."""
    from efficientdet.train.step import train_step
    from efficientdet.train.trainer import Trainer

    cfg = tiny_config(tiny_data, tmp_path / "x", val=False, optimizer="sgd", ema_decay=0.0)
    a = Trainer(cfg)
    b = Trainer(cfg.replace(out=str(tmp_path / "y")))
    images, targets = next(iter(a.loader))
    for t in (a, b):
        t.model.eval()  # BN running statistics: the gradient is then exactly additive over images
    ta = train_step(a.state, a.setup, images, copy.deepcopy(targets), accumulate=1)
    tb = train_step(b.state, b.setup, images, copy.deepcopy(targets), accumulate=2)
    assert ta["loss"] == pytest.approx(tb["loss"], rel=1e-5)
    assert ta["grad_norm"] == pytest.approx(tb["grad_norm"], rel=1e-4)
    wa, wb = a.model.state_dict(), b.model.state_dict()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa if wa[k].dtype.is_floating_point)
    assert worst < 1e-5


def test_anchors_command(tiny_data, capsys):
    from efficientdet.cli import main

    code = main(["anchors", "--train-images", str(tiny_data["train_images"]), "--train-annotations",
                 str(tiny_data["train_annotations"]), "--image-size", "128"])
    out = capsys.readouterr().out
    assert code == 0
    assert "current anchors" in out and "proposed anchors" in out and "P3" in out
    assert "best possible recall" in out and "input size:" in out
    code = main(["anchors", "--train-images", "nowhere", "--train-annotations", "nowhere.json"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_anchors_command_suggests_p2_for_tiny_objects(tmp_path, capsys):
    """4 px objects on a 256 px image: no P3 anchor fits them, a P2 level does (tests/test_anchor_fit.py)."""
    import json

    from PIL import Image

    from efficientdet.cli import main

    (tmp_path / "images").mkdir()
    Image.new("RGB", (256, 256), (90, 120, 150)).save(tmp_path / "images" / "a.jpg")
    centres = [2 + 8 * k for k in range(2, 30, 3)]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [x - 2, y - 2, 4, 4], "area": 16, "iscrowd": 0}
            for i, (x, y) in enumerate((x, y) for x in centres for y in centres)]
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 256, "height": 256}], "annotations": anns,
            "categories": [{"id": 1, "name": "dot"}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    code = main(["anchors", "--train-images", str(tmp_path / "images"), "--train-annotations",
                 str(tmp_path / "a.json"), "--image-size", "256"])
    out = capsys.readouterr().out
    assert code == 0 and "--model-override min_level=2" in out and "best possible recall is 100.0%" in out


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # the second loader, on a 1-CPU runner
def test_loader_workers_capped_to_usable_cpus(tiny_data, tmp_path, monkeypatch):
    """More loader processes than CPUs only compete, and torch warns about it on the user's terminal."""
    import torch

    from efficientdet.data import read_dataset
    from efficientdet.factory import create_model
    from efficientdet.train import build

    cfg = tiny_config(tiny_data, tmp_path, workers=2).resolve(8)[0]
    data = read_dataset("coco", cfg.train_images, cfg.train_annotations)
    model = create_model("d0", num_classes=data.num_classes, image_size=128, **TINY)
    monkeypatch.setattr(build, "usable_cpus", lambda: 1)
    loader, _ = build.build_loader(cfg, data, model, torch.device("cpu"))
    assert loader.num_workers == 1
    monkeypatch.setattr(build, "usable_cpus", lambda: 8)
    assert build.build_loader(cfg, data, model, torch.device("cpu"))[0].num_workers == 2
