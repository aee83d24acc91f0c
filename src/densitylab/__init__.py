"""densitylab: train a small GPT from scratch while counting exposures and probing representations."""

__version__ = "0.1.0"
