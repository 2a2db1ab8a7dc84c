"""The web side: overlay, pages, JSON API and metrics, over plain view data (never the engine's internals)."""
