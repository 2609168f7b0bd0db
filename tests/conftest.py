"""Shared test settings: few threads, so a test run never fights itself for the two cores."""

import torch

torch.set_num_threads(1)
