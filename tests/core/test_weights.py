"""core/weights.py: a dict of tensors loads into a network that reads its state's version metadata."""

import pytest
import torch
import torchvision

from core.weights import load_weights


def test_a_plain_dict_loads_into_mnasnet_which_reads_its_version():
    """torchvision's MNASNet refuses a state without `_metadata` (found by the zoo: its `qat` stage failed)."""
    torch.manual_seed(0)
    source, target = torchvision.models.mnasnet0_5(num_classes=10), torchvision.models.mnasnet0_5(num_classes=10)
    plain = {k: v.clone() for k, v in source.state_dict().items()}
    with pytest.raises(ValueError, match="version"):
        target.load_state_dict(plain)
    load_weights(target, plain)
    assert all(torch.equal(v, plain[k]) for k, v in target.state_dict().items())


def test_metadata_the_tensors_carry_is_kept():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    state = net.state_dict()
    state._metadata[""]["marker"] = 1
    seen = {}
    original = torch.nn.Sequential._load_from_state_dict

    def spy(self, state_dict, prefix, local_metadata, *args):
        seen[prefix] = dict(local_metadata)
        return original(self, state_dict, prefix, local_metadata, *args)

    torch.nn.Sequential._load_from_state_dict = spy
    try:
        load_weights(net, state)
    finally:
        torch.nn.Sequential._load_from_state_dict = original
    assert seen[""].get("marker") == 1
