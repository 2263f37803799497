"""Song-model data: section tags, lyrics text, audio-token files and training windows."""
