"""Notifications about runs and machines: channels (a registry, one module each), a notifier that never blocks, training messages."""
