"""Notifications about runs and machines: channels (Telegram, webhook, ntfy), a notifier that never blocks, training messages."""
