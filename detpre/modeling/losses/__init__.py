"""One file per self-supervised loss (lightly-style), each tested against a reference."""
