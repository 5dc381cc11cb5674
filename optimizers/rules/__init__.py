"""The update rules, one algorithm family per module, grouped by kind."""
