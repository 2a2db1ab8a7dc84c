"""What a chat message is once it has left the Twitch client (or the local terminal): plain data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatMessage:
    """One line of chat, from Twitch or from local chat, as every command handler sees it."""

    user_id: str  # Twitch's numeric user id; local chat uses "local:<name>"
    login: str  # lower-case account name
    display_name: str
    text: str
    message_id: str = ""
    is_moderator: bool = False
    is_broadcaster: bool = False
    # Set when the message is a channel-point redemption: the reward's id. Redemptions enter the priority lane.
    reward_id: str | None = None

    @property
    def is_privileged(self) -> bool:
        return self.is_moderator or self.is_broadcaster
