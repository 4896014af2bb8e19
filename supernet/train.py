"""``python -m supernet.train [key=value ...]``: train one self-supervised supernet (Hydra entry point).

Examples::

    python -m supernet.train                                   # embedded MNIST digits, tiny space
    python -m supernet.train model=resnet18_cifar data=cifar10 data.root=./data epochs=200
    python -m supernet.train ssl=moco views=sslight out_dir=runs/moco
    python -m supernet.train out_dir=runs/train resume=true     # continue after an interruption
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from search_spaces import ConfigError
from supernet.checkpoint import CheckpointError
from supernet.data import DataError
from supernet.train_config import register_schema
from supernet.trainer import SetupError, TrainingStopped, train

register_schema()


@hydra.main(config_path="../configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        out_dir = train(cfg)
    except (DataError, CheckpointError, ConfigError, SetupError, TrainingStopped) as error:
        message = error.args[0] if error.args else str(error)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    if os.environ.get("RANK", "0") == "0":
        print(f"done: {out_dir}/checkpoint.pt")


if __name__ == "__main__":
    main()
