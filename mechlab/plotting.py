"""What every chapter's plots share."""

from __future__ import annotations

import numpy as np
from torch import Tensor


def as_numpy(t: Tensor) -> np.ndarray:
    """A float NumPy copy of a tensor on any device, detached from the graph."""
    return t.detach().float().cpu().numpy()
