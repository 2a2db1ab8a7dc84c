"""The composer: data, tokens, the Transformer, training and seeded sampling of MIDI events."""
