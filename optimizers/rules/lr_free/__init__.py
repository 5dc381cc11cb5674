"""Learning-rate-free and schedule-free rules."""
