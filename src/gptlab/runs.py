"""Opening a trained run: its resolved configuration, its dataset and a checkpoint's weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from gptlab.config import RunConfig
from gptlab.data.locate import locate_dataset
from gptlab.data.tokens import TokenDataset
from gptlab.model import GPT
from gptlab.rundir import DEFAULT_CHECKPOINT, read_run_config
from gptlab.train.checkpoint import Checkpoint, find_checkpoint
from gptlab.weights import build_model


@dataclass
class TrainedModel:
    run_dir: Path
    config: RunConfig
    checkpoint: Checkpoint
    model: GPT

    def dataset(self, datasets_dir: Optional[Path] = None) -> TokenDataset:
        return locate_dataset(self.config.train.dataset, self.run_dir, datasets_dir)


def open_trained_run(run_dir: Path, which: str = DEFAULT_CHECKPOINT, device: torch.device | str = "cpu") -> TrainedModel:
    """The model of checkpoint `which` (best, latest or a name), in eval mode with dropout off."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    checkpoint = find_checkpoint(run_dir, which)
    model = build_model(config.model.model_copy(update={"drop_rate": 0.0}), device="cpu", initialise=False)
    checkpoint.load_model(model)
    return TrainedModel(run_dir, config, checkpoint, model.to(device).eval())
