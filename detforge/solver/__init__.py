"""Optimisation: parameter groups, learning-rate schedules, batch-size scaling."""
