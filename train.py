"""Train a language model with DPO: `python train.py [task=…] [model=…] [loss=…] [beta=…]` (see README.md)."""

from dpo_lightning.cli.train import main

if __name__ == "__main__":
    main()
