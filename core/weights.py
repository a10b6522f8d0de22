"""Loading a mapping of tensors into a network as its own state_dict would be loaded.

A module's `state_dict()` carries `_metadata` (each submodule's `_version`), and some networks read it when they
load: torchvision's MNASNet refuses a state without it ("version should be set to 1 or 2"). A dict the pipeline
builds (the QAT-trained float weights, weights read back from an exported file) has none, so it is loaded here with
the network's own metadata: the tensors came from this same class.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch.nn as nn


def load_weights(module: nn.Module, tensors: Mapping, strict: bool = True):
    """`module.load_state_dict(tensors)`, with the module's own `_metadata` where `tensors` has none."""
    state = OrderedDict(tensors)
    metadata = getattr(tensors, "_metadata", None)
    if metadata is None:
        metadata = getattr(module.state_dict(), "_metadata", None)
    if metadata is not None:
        state._metadata = metadata
    return module.load_state_dict(state, strict=strict)
