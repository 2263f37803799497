r"""python launch/demo.py --config=configs/demo.py --workdir=runs/demo

The hierarchical style adapters end to end on real music (lora_jax/hierarchy/demo.py): builds
style packs from the music21 corpus (Celtic fiddle tunes with their reels, jigs and hornpipes, and
the Essen folksongs), takes the base shipped in assets/base_model/ (trained by
launch/train_base.py on Essen folksongs, Renaissance polyphony, Bach chorales and MAESTRO/POP909
performances, with augmented velocities and instruments: it has never heard a fiddle tune),
trains the celtic_fiddle parent adapter and the jig child adapter over it, merges both, writes
MIDI samples and a PyTorch export, and prints held-out NLL (bits per token) on the test pieces of
jigs (the child's style), reels (a sibling sub-style) and Essen folksongs (another genre) for
base, base + parent, base + parent + child and merged, then the sibling checks per kind of token
(the child on reels, the parent on Essen songs). Adapter settings come from
configs/lora_adapter_config.py < configs/genres/celtic_fiddle.py < configs/styles/celtic_fiddle/
jig.py < `config.overrides`.

Variants (`--config=configs/demo.py:<variant>`):
  (none)        40 pieces per style, a shorter parent run: about 2 minutes on 2 CPU cores.
  full          150 pieces per style and the configs' own epochs: the fuller run (~10 minutes).
  from_scratch  as (none) with 110 pieces per style, and trains the base here too.
Single values: `--config.child=reel --config.sibling=jig`, `--config.overrides.parent.epochs=8`.
"""

import os

import ml_collections

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config; `arg` picks a variant."""
  variant = arg or "quick"
  if variant not in ("quick", "full", "from_scratch"):
    raise ValueError(f"unknown variant {variant!r} of configs/demo.py: (none), full or "
                     f"from_scratch")
  config = ml_collections.ConfigDict()
  config.packs_root = ""  # '' builds the packs in <workdir>/style_packs

  config.build = ml_collections.ConfigDict()
  config.build.max_pieces = 40  # per style: the genre's own pieces and each sub-style
  config.build.workers = 2  # conversion processes

  config.base = ml_collections.ConfigDict()
  config.base.path = os.path.join(_ROOT, "assets", "base_model", "base_model.safetensors")
  config.base.config = os.path.join(_ROOT, "configs", "base_model.py")  # when training it here
  # What the base learns, when trained here; the shipped one also read renaissance and the
  # MAESTRO/POP909 performances (assets/base_model/README.md). Never the demo's parent genre.
  config.base.genres = ("essen_folk", "baroque_chorale")

  config.adapter_config = os.path.join(_ROOT, "configs", "lora_adapter_config.py")
  config.parent = "celtic_fiddle"  # genre: configs/genres/<parent>.py
  config.child = "jig"  # sub-style: configs/styles/<parent>/<child>.py (8 test pieces at 40)
  config.sibling = "reel"  # another sub-style of the parent, scored in the table
  config.other_genre = "essen_folk"  # a genre the base knows, scored in the table

  # Adapter settings at command-line precedence, nested like a genre file.
  config.overrides = ml_collections.ConfigDict()
  config.overrides.parent = ml_collections.ConfigDict({"epochs": 4})  # the genre file says 6
  config.overrides.child = ml_collections.ConfigDict()

  config.generate = ml_collections.ConfigDict()
  config.generate.n_samples = 4
  config.generate.length = 768  # new tokens per sample (the base reads 1,024)
  config.generate.min_bars = 16  # no EOS before 16 bars: a sample is a tune, not one note
  config.generate.temperature = 0.9
  config.generate.top_k = 0
  config.generate.top_p = 0.95
  config.generate.seed = 0

  config.torch_export = True  # also write the merged model for PyTorch (.pt)

  if variant == "full":
    config.build.max_pieces = 150
    config.overrides = ml_collections.ConfigDict()  # the genre and style files' own recipe
  if variant == "from_scratch":
    config.base.path = ""
    config.build.max_pieces = 110  # as the shipped base's Essen packs (assets/base_model/)
  return config
