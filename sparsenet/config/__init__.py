"""The configuration layer: typed schemas of the config groups (`schema.py`), the one place
for value checks (`checks.py`) and the one way components are chosen and built from a config
node (`components.py`). The pipeline turns a composed config into typed settings once
(`sparsenet.pipeline.settings.parse_config`); nothing after that reads the raw config."""
