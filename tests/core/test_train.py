import math
import pytest
import torch

from core.workspace import CHECKPOINT
from pipeline.stages import Pipeline
from core.train import CheckpointError, divergence, load_checkpoint


@pytest.fixture
def trained(make_config):
    def train(out, **overrides):
        pipeline = Pipeline(make_config(out, **overrides))
        pipeline.train()
        return pipeline

    return train


def test_training_learns_on_a_tiny_subset(exported):
    # 1 epoch on 1024 digits: chance is 10%.
    assert exported.manifest["accuracy"]["fp32"] > 0.6
    history = exported.manifest["stages"]["train"]["history"]
    assert history[0]["images"] == 1024 and history[0]["images_per_s"] > 0


def test_same_seed_same_weights(tmp_path, trained):
    a = trained(tmp_path / "a", limit_train=256).fp32_model().state_dict()
    b = trained(tmp_path / "b", limit_train=256).fp32_model().state_dict()
    c = trained(tmp_path / "c", limit_train=256, seed=1).fp32_model().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc2.weight"], c["fc2.weight"])


def test_resume_continues_where_it_stopped(tmp_path, trained):
    straight = trained(tmp_path / "straight", limit_train=256, epochs=2).fp32_model().state_dict()
    trained(tmp_path / "resumed", limit_train=256, epochs=1)  # the "interrupted" run
    resumed = trained(tmp_path / "resumed", limit_train=256, epochs=2, resume=True)
    assert [h["epoch"] for h in resumed.manifest["stages"]["train"]["history"]] == [1, 2]
    state = resumed.fp32_model().state_dict()
    assert all(torch.equal(straight[k], state[k]) for k in straight)


def test_finished_stage_is_reused(tmp_path, trained, capsys):
    trained(tmp_path, limit_train=256)
    before = (tmp_path / CHECKPOINT).stat().st_mtime_ns
    trained(tmp_path, limit_train=256)
    assert "train: reusing" in capsys.readouterr().out
    assert (tmp_path / CHECKPOINT).stat().st_mtime_ns == before


def test_corrupt_checkpoint_is_an_error_and_is_kept(tmp_path, trained):
    trained(tmp_path, limit_train=256)
    ckpt = tmp_path / CHECKPOINT
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        trained(tmp_path, limit_train=256)
    with pytest.raises(CheckpointError, match="corrupt"):
        trained(tmp_path, limit_train=256, epochs=2, resume=True)
    assert ckpt.read_bytes() == b"not a checkpoint"


def test_checkpoint_holds_what_resume_needs(exported):
    state = load_checkpoint(exported.out / CHECKPOINT)
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "key", "meta"} <= set(state)
    assert state["meta"]["labels"] == [str(i) for i in range(10)] and len(state["meta"]["mean"]) == 1


def _bn_data(n=96):
    from core.data import DataBundle

    g = torch.Generator().manual_seed(0)
    images = torch.randint(100, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)  # bright: the conv outputs sit far from 0
    labels = torch.randint(0, 2, (n,), generator=g)
    return DataBundle("synthetic", "test", images, labels, images, labels, ["a", "b"], [0.1], [0.3])


def test_batchnorm_recalibration_gives_the_plain_average_of_the_batch_statistics():
    """MobileNetV3 keeps BatchNorm momentum 0.01: after a short run the running mean is still near 0.
    recalibrate_batchnorm replaces it by the average of the per-batch means under the final weights."""
    import torch.nn as nn

    from core.loaders import TrainLoader
    from core.train import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.01), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2)).eval()
    loader = TrainLoader(_bn_data(), 32, seed=0)
    with torch.no_grad():
        means = [model[0](x).mean(dim=(0, 2, 3)) for x, _ in loader.epoch(5)]
    stale = model[1].running_mean.clone()
    assert torch.equal(stale, torch.zeros(4))
    done = recalibrate_batchnorm(model, loader, batches=2, epoch=5)
    assert done == {"layers": 1, "batches": 2}
    assert torch.allclose(model[1].running_mean, torch.stack(means[:2]).mean(0), atol=1e-5)
    assert not torch.allclose(model[1].running_mean, stale, atol=0.1)
    assert model[1].momentum == 0.01 and not model.training  # settings put back
    assert recalibrate_batchnorm(model, loader, batches=0, epoch=5) is None  # --bn-recalibration 0: untouched
    assert recalibrate_batchnorm(nn.Linear(2, 2), loader, batches=2, epoch=5) is None  # no BatchNorm: nothing to do


def test_divergence_names_a_non_finite_or_exploding_loss():
    assert divergence([{"epoch": 1, "loss": 1.2}, {"epoch": 2, "loss": 0.5}], 10) is None
    assert "epoch 2 is nan" in divergence([{"epoch": 1, "loss": 1.2}, {"epoch": 2, "loss": math.nan}], 10)
    assert "exploded" in divergence([{"epoch": 1, "loss": 9.6e9}], 10)
    assert divergence([], 10) is None
