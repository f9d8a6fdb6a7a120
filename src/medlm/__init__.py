"""medlm: train, fine-tune, evaluate and compare small medical language models."""

__version__ = "0.1.0"
