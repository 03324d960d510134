"""Entry points: `python -m launch.NAME --config configs/NAME.py --workdir DIR`."""
