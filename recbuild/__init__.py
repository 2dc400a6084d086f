"""recbuild: Make for recommender deployment artifacts."""

__version__ = "0.1.0"
