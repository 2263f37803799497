"""Hierarchical style adapters: a base, a parent adapter per genre, a child per sub-style.

  settings.py    the config hierarchy (defaults < genre < style < flags) and the seed's target names
  windows.py     a style pack split as the loop's .npz of token windows, cached by content
  base_file.py   a model file that records its own size; vocab.json beside every model
  layout.py      where the seed puts each file
  training.py    train_base, train_parent, train_child over the one shared loop
  merging.py     compatibility checks, additive / interpolative merges, the inference config
  generation.py  MIDI samples from a base with run-time adapters, or from a merged model
  evaluation.py  held-out NLL in bits per token, and the levels table
  demo.py        all of it end to end on real pieces
"""
