"""Command-line entries: `dpo-train` (`python train.py`) and `python -m dpo_lightning.cli.pairs | winrate | frontier`.

The top layer: it composes configs, checks them (`checks.validate_config`) and calls the library; no library
module imports it.
"""
