"""The recipe chooser: official = the paper's values; auto = values worked out from the schedule."""

from __future__ import annotations

import pytest

from efficientdet.errors import ConfigError
from efficientdet.train.recipe import RECIPE_FIELDS, choose_recipe, official_recipe


def test_official_is_the_paper_recipe():
    r = choose_recipe("official", epochs=10, num_images=800, batch_size=8, pretrained=False)
    assert r == official_recipe(8)
    assert r.fields() == {"optimizer": "sgd", "lr": 0.01, "weight_decay": 4e-5, "warmup_epochs": 1.0,
                          "warmup_factor": 0.1, "ema_decay": 0.9998, "ema_warmup_steps": 2000.0,
                          "scale_min": 0.1, "scale_max": 2.0, "backbone_lr_scale": 1.0}


def test_auto_short_run_from_scratch():
    # 800 images / batch 8 = 100 steps per epoch, 10 epochs = 1000 steps
    r = choose_recipe("auto", epochs=10, num_images=800, batch_size=8, pretrained=False)
    assert r.optimizer == "adamw" and r.lr == pytest.approx(1e-2)
    assert r.warmup_epochs == pytest.approx(0.5)  # 5% of 1000 steps = 50 steps = half an epoch
    assert r.ema_decay == pytest.approx(1 - 1 / 80)  # window 8% of 1000 steps
    assert r.ema_warmup_steps == pytest.approx(50)
    assert (r.scale_min, r.scale_max) == (0.6, 1.4)
    assert set(r.fields()) == set(RECIPE_FIELDS)
    assert r.describe().startswith("recipe auto: adamw lr 0.01 ")
    assert r.backbone_drop_path == 0.0 and "backbone drop path 0" in r.describe()


def test_auto_drop_path_only_in_short_runs_and_explicit_override_wins():
    from efficientdet.train import TrainConfig

    long = choose_recipe("auto", epochs=100, num_images=1000, batch_size=8, pretrained=False)
    assert long.backbone_drop_path is None
    assert choose_recipe("official", epochs=10, num_images=800, batch_size=8,
                         pretrained=False).backbone_drop_path is None
    cfg = TrainConfig(train_images="x", train_annotations="y", epochs=10, batch_size=8)
    resolved, _ = cfg.resolve(800)
    assert resolved.model_overrides == {"backbone_drop_path": 0.0}
    mine = cfg.replace(model_overrides={"backbone_drop_path": 0.1, "fpn_channels": 32})
    assert mine.resolve(800)[0].model_overrides == {"backbone_drop_path": 0.1, "fpn_channels": 32}
    assert cfg.replace(recipe="official").resolve(800)[0].model_overrides == {}


def test_auto_pretrained_batch_scaling_and_jitter_by_epochs():
    r = choose_recipe("auto", epochs=50, num_images=800, batch_size=32, pretrained=True)
    assert r.lr == pytest.approx(1e-2 * 2)  # sqrt(32 / 8) = 2
    assert r.warmup_epochs == pytest.approx(1.0)  # 5% of 1250 steps = 62.5 steps > one epoch (25 steps)
    assert (r.scale_min, r.scale_max) == (0.4, 1.6)
    long = choose_recipe("auto", epochs=200, num_images=100, batch_size=8, pretrained=False)
    assert long.optimizer == "adamw" and (long.scale_min, long.scale_max) == (0.1, 2.0)
    assert long.ema_decay == pytest.approx(1 - 1 / (0.08 * 2400))


def test_auto_long_pretrained_schedule_is_official():
    r = choose_recipe("auto", epochs=300, num_images=117_266, batch_size=64, pretrained=True)
    assert r.name == "auto" and r.fields() == official_recipe(64).fields()


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="recipe 'fast' is not one of auto, official"):
        choose_recipe("fast", 10, 800, 8, False)
