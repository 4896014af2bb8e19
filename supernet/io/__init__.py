"""What runs leave on disk: atomic files, checkpoints (loaded safely), provenance records."""

from supernet.io.checkpoint import (
           CheckpointError,
           find_latest_checkpoint,
           load_checkpoint,
           load_supernet,
)
from supernet.io.files import atomic_save, atomic_write, atomic_write_text
from supernet.io.provenance import provenance

__all__ = ["CheckpointError", "atomic_save", "atomic_write", "atomic_write_text", "find_latest_checkpoint",
           "load_checkpoint", "load_supernet", "provenance"]
