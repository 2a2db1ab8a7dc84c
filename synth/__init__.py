"""Sound: SoundFont discovery and FluidSynth rendering of timed MIDI messages."""
