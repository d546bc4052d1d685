"""Renting GPU machines: providers behind a small interface (Lambda first) and the capacity watcher."""
