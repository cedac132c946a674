"""terminus: the application on top of the tree. The run config (config.py, composed from every
layer's config dataclass), the `terminus` command line (cli.py) and its subcommands (commands/).

The top layer (docs/layers.md): it may import every package, and no package imports it. The ground
floor everything shares (errors, fields, model paths, the OpenAI client, tracking) is core/.
"""

__version__ = "0.1.0"   # the one place the version is set (pyproject.toml reads it)
