"""The YAML config groups, shipped as the package ``lightning_seg.conf`` (see ``[tool.setuptools]`` in pyproject.toml).

A regular package (this file), not a namespace one: ``importlib.resources.files`` then returns a real folder both in
an editable install and in an installed wheel (lightning_seg.config.conf_dir).
"""
