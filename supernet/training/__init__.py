"""Training: the loop and its setup, settings schema, schedules, optimizers, group regularization,
data-parallel plumbing, checkpoints of a run."""

from supernet.training.loop import TrainingStopped, train, train_step
from supernet.training.schema import TrainConfig

__all__ = ["TrainConfig", "TrainingStopped", "train", "train_step"]
