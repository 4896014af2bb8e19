"""``python -m supernet.train [key=value ...]``: train one self-supervised supernet.

The settings are ``configs/train.yaml`` with the groups ``model/``, ``data/``, ``ssl/`` and
``views/``, composed under the schema of :mod:`supernet.training.schema` (unknown keys and bad
choices are errors), then ``key=value`` overrides. Examples::

    python -m supernet.train                                   # embedded MNIST digits, tiny space
    python -m supernet.train model=resnet18_cifar data=cifar10 data.root=./data epochs=200
    python -m supernet.train ssl=moco views=sslight out_dir=runs/moco
    python -m supernet.train out_dir=runs/train resume=true     # continue after an interruption
    torchrun --standalone --nproc_per_node=2 -m supernet.train  # data-parallel
"""

from __future__ import annotations

import os
import sys

from omegaconf import OmegaConf

from supernet.cli import command
from supernet.settings import compose_settings, settings_dict
from supernet.training import TrainConfig, train


def load_train_settings(overrides: list[str]) -> TrainConfig:
    """configs/train.yaml with ``overrides``, typed and validated."""
    return compose_settings("train", overrides, TrainConfig)


@command(interrupted="interrupted: resume=true continues from the last checkpoint")
def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in overrides):
        print(__doc__)
        print("Defaults (configs/train.yaml):\n")
        print(OmegaConf.to_yaml(settings_dict(load_train_settings([]))))
        return 0
    out_dir = train(load_train_settings(overrides))
    if os.environ.get("RANK", "0") == "0":
        print(f"done: {out_dir}/checkpoint.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
