"""ml_collections configs for the launch/ scripts (`--config configs/NAME.py`)."""
