"""Shared test settings: one thread per test process keeps the suite fast and deterministic on 2 cores."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

torch.set_num_threads(1)
