"""The vocal/accompaniment separator: data it is trained on, its mask model, and running it."""
