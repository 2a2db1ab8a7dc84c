"""The concert: the conductor, and the one place where the generator and the synth meet."""
