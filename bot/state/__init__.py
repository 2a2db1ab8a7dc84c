"""The bot's state: the Redis store, its key names and scripts, the bundled Redis, the data folder's lock."""
