"""What can vary in a supernet: search-space specs and sub-network configs, as plain data."""

from search_spaces.config import ConfigError, SubnetConfig
from search_spaces.errors import UserError, first_line
from search_spaces.registry import get_space, list_spaces, subnet_space
from search_spaces.spec import BlockSpec, LayerSpec, SearchSpace, width_choices_for

__all__ = [
    "BlockSpec",
    "ConfigError",
    "LayerSpec",
    "SearchSpace",
    "SubnetConfig",
    "UserError",
    "first_line",
    "get_space",
    "list_spaces",
    "subnet_space",
    "width_choices_for",
]
