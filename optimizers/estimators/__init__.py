"""Gradients without backpropagation."""
