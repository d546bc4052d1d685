"""Experiments: plan and run (variant x seed) runs from an experiment file, compare them against seed
noise, and show the result as tables, charts and a self-contained HTML report."""
