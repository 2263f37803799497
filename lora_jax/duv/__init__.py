"""DUV humanisation: model bundles, batched prediction, MIDI in and out, training, piano rolls."""

from lora_jax.duv.apply import Protection, Report, TrackSelectionError, \
    apply_duv_to_pretty_midi, humanize
from lora_jax.duv.bundle import BundleError, DuvModel, load_model, save_bundle
