"""Load, benchmark and soak tools for a running stack (run from the repository root, e.g. ``python -m load.rss``)."""
