"""sparsenet's Hydra config groups, shipped as the package `sparsenet.conf`.

Importing it (Hydra does, to read the YAML files) registers the typed schema that heads the
defaults list of config.yaml (sparsenet/config/schema.py)."""

from sparsenet.config.schema import register_schemas

register_schemas()
