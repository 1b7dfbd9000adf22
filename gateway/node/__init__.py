"""The gateway's process tree: root supervisor, listener slots, workers, admin endpoint, and the CLI's control side."""
