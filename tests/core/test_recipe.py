"""The training recipe: defaults are the recipe the pipeline always had; the options do what they say."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.config import ConfigError, RunConfig
from core.recipe import WARMUP_START, Recipe


def lrs(recipe: Recipe, epochs: int, lr: float = 1.0) -> list[float]:
    optimizer = recipe.make_optimizer(nn.Linear(2, 2).parameters(), lr)
    scheduler = recipe.make_scheduler(optimizer, epochs)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_defaults_are_adam_and_steplr_0_7_per_epoch():
    recipe = Recipe.from_config(RunConfig())
    assert recipe == Recipe()
    optimizer = recipe.make_optimizer(nn.Linear(2, 2).parameters(), 1e-3)
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["weight_decay"] == 0
    assert type(recipe.make_scheduler(optimizer, 3)) is torch.optim.lr_scheduler.StepLR
    assert lrs(recipe, 3) == pytest.approx([1.0, 0.7, 0.49])
    assert recipe.loss_fn() is F.cross_entropy and recipe.augmentation(32) is None


def test_optimizers():
    params = list(nn.Linear(2, 2).parameters())
    sgd = Recipe(optimizer="sgd", momentum=0.8, weight_decay=1e-4).make_optimizer(params, 0.1)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.8 and sgd.defaults["weight_decay"] == 1e-4
    adamw = Recipe(optimizer="adamw", weight_decay=0.05).make_optimizer(params, 0.1)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.05


def test_cosine_with_warmup_and_no_schedule():
    seen = lrs(Recipe(lr_schedule="cosine", warmup_epochs=2), epochs=6)
    assert seen[0] == pytest.approx(WARMUP_START) and seen[0] < seen[1] < seen[2]
    assert seen[2] == pytest.approx(1.0)  # warm-up done: the cosine starts at the full lr
    assert all(a > b for a, b in zip(seen[2:], seen[3:])) and seen[-1] < 0.2
    assert lrs(Recipe(lr_schedule="none"), epochs=3) == pytest.approx([1.0, 1.0, 1.0])
    assert lrs(Recipe(lr_gamma=0.5, warmup_epochs=1), epochs=3) == pytest.approx([WARMUP_START, 1.0, 0.5])


def test_label_smoothing():
    logits, labels = torch.randn(6, 4), torch.randint(0, 4, (6,))
    smooth = Recipe(label_smoothing=0.1).loss_fn()(logits, labels)
    assert smooth == pytest.approx(float(F.cross_entropy(logits, labels, label_smoothing=0.1)))
    assert smooth != pytest.approx(float(F.cross_entropy(logits, labels)))


def test_augmentation_is_for_three_channel_images():
    with pytest.raises(ConfigError, match="--augment .* is for 3-channel images"):
        Recipe(augment=True).check_augmentation(1)
    augment = Recipe(augment=True, augment_min_scale=0.5).augmentation(16)
    image = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
    torch.manual_seed(0)
    out = [augment(image) for _ in range(4)]
    assert all(o.shape == (3, 16, 16) and o.dtype == torch.uint8 for o in out)
    assert any(not torch.equal(out[0], o) for o in out[1:])  # random crops differ


@pytest.mark.parametrize("setting, message", [
    (dict(optimizer="lamb"), "unknown --optimizer 'lamb'"),
    (dict(lr_schedule="linear"), "unknown --lr-schedule 'linear'"),
    (dict(momentum=1.0), "--momentum is in [0, 1)"),
    (dict(label_smoothing=-0.1), "--label-smoothing is in [0, 1)"),
    (dict(warmup_epochs=-1), "--warmup-epochs must be >= 0"),
    (dict(loader="disk"), "unknown --loader 'disk'"),
    (dict(workers=-1), "--workers must be >= 0"),
])
def test_bad_recipe_settings(setting, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        RunConfig(**setting).validate()
