"""Opening a trained run: its resolved configuration, its dataset and a checkpoint's weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import click
import torch

from gptlab.config import RunConfig, load_run_config, read_run_config
from gptlab.data.locate import locate_dataset
from gptlab.data.tokens import TokenDataset
from gptlab.errors import UserError
from gptlab.model import GPT
from gptlab.rundir import DEFAULT_CHECKPOINT, RESOLVED_CONFIG
from gptlab.runtime.checkpoint import MODEL_WEIGHTS, Checkpoint, find_checkpoint, offer_good_checkpoint
from gptlab.weights import build_model


@dataclass
class TrainedModel:
    run_dir: Path
    config: RunConfig
    checkpoint: Checkpoint
    model: GPT

    def dataset(self, datasets_dir: Optional[Path] = None) -> TokenDataset:
        return locate_dataset(self.config.train.dataset, self.run_dir, datasets_dir)


def open_trained_run(
    run_dir: Path, which: str = DEFAULT_CHECKPOINT, device: torch.device | str = "cpu"
) -> TrainedModel:
    """The model of checkpoint `which` (best, latest or a name), in eval mode with dropout off."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    note = _edited_since_training(run_dir, config)
    if note:
        click.echo(f"note: {note}", err=True)
    checkpoint = find_checkpoint(run_dir, which)
    model = build_model(config.model.model_copy(update={"drop_rate": 0.0}), device="cpu", initialise=False)
    try:
        checkpoint.load_model(model)
    except UserError as error:
        offer = offer_good_checkpoint(
            run_dir, "choose it with --checkpoint", lambda other: other.check_content(MODEL_WEIGHTS)
        )
        raise UserError(error.lines[0] + offer, *error.lines[1:]) from None
    return TrainedModel(run_dir, config, checkpoint, model.to(device).eval())


def _edited_since_training(run_dir: Path, used: RunConfig) -> Optional[str]:
    """Say so when model.json or train.json no longer match resolved_config.json (what the run was trained with)."""
    if not (run_dir / RESOLVED_CONFIG).is_file():
        return None  # the config used is model.json and train.json themselves
    try:
        current = load_run_config(run_dir).to_json_dict()
    except UserError as error:
        return f"{run_dir}/model.json or train.json is not valid now ({error.lines[0]}); using {RESOLVED_CONFIG}, the configuration the run was trained with"
    used_dict = used.to_json_dict()
    changed = [
        f"{part}.{key}"
        for part in ("model", "train")
        for key in used_dict[part]
        if current[part].get(key) != used_dict[part][key]
    ]
    if not changed:
        return None
    return (
        f"{run_dir}: model.json/train.json differ from {RESOLVED_CONFIG} in {', '.join(changed)}; "
        f"using {RESOLVED_CONFIG}, the configuration the run was trained with"
    )
