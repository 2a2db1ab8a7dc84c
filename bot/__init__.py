"""The concert bot: chat commands, the request queue and the conductor that wires generator and synth."""
