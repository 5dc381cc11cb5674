"""Transforms around an optimizer: averaging, lookahead, plateaus, skipped steps, 8-bit state."""
