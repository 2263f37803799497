"""Audio in: analysis (tempo, key, energy), clips at musical boundaries, audio to MIDI.

Each module is one idea: `load` reads and checks a file, `tempo`, `key` and `energy` measure,
`analysis` puts them together (`analyze(path) -> Analysis`), `clips` cuts, `render` and
`eval_set` make the rendered audio whose truth is known, `transcribe` turns audio into MIDI.
"""
