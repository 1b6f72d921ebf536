"""The functions the checks compare with, as they were when mechlab was first imported.

The chapter's setup cell imports mechlab before any learner code runs, so these are
the real torch and NumPy functions: a learner cell that later rebinds
`torch.Tensor.detach` or `numpy.abs` changes nothing here. The grader reloads
`mechlab.checks` and the chapter's `checks` and `reference` modules from disk before
every test cell (so rebinding the course's own check helpers gains nothing either),
and they take their references from this module, which it never reloads.
"""

import builtins
import sys
import threading

import numpy as np
import torch

Tensor = torch.Tensor
Parameter = torch.nn.Parameter
detach = torch.Tensor.detach
to = torch.Tensor.to
numpy = torch.Tensor.numpy
clone = torch.Tensor.clone
np_abs = np.abs
np_isnan = np.isnan
np_isinf = np.isinf
np_argwhere = np.argwhere
np_max = np.max
type_ = builtins.type
isinstance_ = builtins.isinstance
setprofile = sys.setprofile
getprofile = sys.getprofile
thread_setprofile = threading.setprofile
thread_getprofile = threading.getprofile
