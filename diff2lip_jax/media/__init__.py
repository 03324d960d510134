"""Media IO shared by data preparation, inference and evaluation: audio + mel, video decode, encode."""
