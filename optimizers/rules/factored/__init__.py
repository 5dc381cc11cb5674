"""Factored second moments: Adafactor and SM3."""
