"""``python -m supernet.train [key=value ...]``: train one self-supervised supernet.

The configuration is Hydra's: ``configs/train.yaml`` with the groups ``model/``, ``data/``,
``ssl/`` and ``views/``, composed under the typed schema of :mod:`supernet.train_config` (unknown
keys are errors), then ``key=value`` overrides. Examples::

    python -m supernet.train                                   # embedded MNIST digits, tiny space
    python -m supernet.train model=resnet18_cifar data=cifar10 data.root=./data epochs=200
    python -m supernet.train ssl=moco views=sslight out_dir=runs/moco
    python -m supernet.train out_dir=runs/train resume=true     # continue after an interruption
    torchrun --standalone --nproc_per_node=2 -m supernet.train  # data-parallel
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from search_spaces import ConfigError
from supernet.checkpoint import CheckpointError
from supernet.data import DataError
from supernet.train_config import register_schema
from supernet.trainer import SetupError, TrainingStopped, train

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(overrides: list[str]) -> DictConfig:
    """configs/train.yaml with ``overrides``, checked against the schema."""
    register_schema()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("train", overrides=overrides)


def _one_line(error: BaseException) -> str:
    """Hydra's and OmegaConf's messages span lines; keep the first line of each link of the chain."""
    parts = []
    while error is not None and len(parts) < 3:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if first and first not in parts and "$VALUE" not in first:  # skip OmegaConf's unfilled templates
            parts.append(first.rstrip("."))
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return ": ".join(parts)


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in overrides):
        print(__doc__)
        print("Defaults (configs/train.yaml):\n")
        print(OmegaConf.to_yaml(compose_config([])))
        return 0
    try:
        cfg = compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as error:
        print(f"error: {_one_line(error)}; see python -m supernet.train --help for the keys", file=sys.stderr)
        return 2
    try:
        out_dir = train(cfg)
    except (DataError, CheckpointError, ConfigError, SetupError, TrainingStopped) as error:
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(f"done: {out_dir}/checkpoint.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
