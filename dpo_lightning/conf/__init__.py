"""The Hydra config groups (`<group>/<option>.yaml`), shipped inside the package so an installed `dpo-train`
finds them from any folder."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent
