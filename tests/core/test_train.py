import pytest
import torch

from core.workspace import CHECKPOINT
from pipeline.stages import Pipeline
from core.train import CheckpointError, load_checkpoint


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
