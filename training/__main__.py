"""Run the training CLI: ``python -m training [--force] [--if-missing] [--quiet]``."""

from training.train import main

if __name__ == "__main__":
    raise SystemExit(main())
