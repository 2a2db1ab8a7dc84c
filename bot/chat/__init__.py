"""Chat: Twitch, terminal and web chat lines in, parsed, checked and answered; the send queue out."""
