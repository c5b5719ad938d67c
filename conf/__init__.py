# Makes the config tree importable as the package ``transferdet.conf`` (see pyproject.toml),
# so Hydra finds it with ``pkg://transferdet.conf`` in editable and wheel installs alike.
