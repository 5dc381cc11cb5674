"""8-bit block-wise optimizer state."""
