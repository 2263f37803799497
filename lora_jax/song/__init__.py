"""The song-model system: the SongGeneration fork's training YAML, its prepared token files as
training windows, and the run that trains and exports in the original's formats."""
