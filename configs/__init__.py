"""The YAML settings of every command, shipped in the wheel as the package data ``supernet.configs``.

This folder stays at the top of the repository (``configs/``); ``pyproject.toml`` maps it to the
package ``supernet.configs`` so an installed wheel carries it, and :func:`supernet.settings.config_dir`
finds it with :mod:`importlib.resources`. Nothing here is imported for its code.
"""
