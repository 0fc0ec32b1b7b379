"""PaI Explorer engine: pruning at initialization of pre-trained vision models."""
