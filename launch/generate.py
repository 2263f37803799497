r"""Sample MIDI files from a model: the base with adapters applied at run time, or a merged model.

python launch/generate.py --model=assets/base_model/base_model.safetensors \
    --adapters=checkpoints/adapters/celtic_fiddle/celtic_fiddle.lora,\
checkpoints/adapters/celtic_fiddle/reel/reel.lora \
    --weights=1.0,1.0 --n-samples=4 --length=384 --temperature=0.9 --top-p=0.95 --seed=0 \
    --output-dir=samples/reel
python launch/generate.py --model=merged_models/reel_model.safetensors --primer=tune.mid \
    --primer-bars=2 --output-dir=samples/reel_merged
python launch/generate.py --inference-config=merged_models/reel_model.json --program=73 \
    --output-dir=...

Sampling follows the tokenizer's grammar, so every file decodes in full; --program picks the
instrument (a General MIDI program 0..127, or drums), --min_bars=8 holds EOS back for 8 bars,
--nogrammar samples unconstrained.
Writes <output-dir>/sample_NN.mid and samples.json (settings, and per file its tokens, notes,
programs (128: drums) and, with --nogrammar, any grammar problem the decoder cut at).
"""

from absl import flags
from absl import logging

from lora_jax import cli, lora
from lora_jax.data import token_grammar
from lora_jax.hierarchy import generation, merging

_MODEL = flags.DEFINE_string("model", None, "Base or merged model file (.safetensors).")
_INFERENCE_CONFIG = flags.DEFINE_string("inference_config", None,
                                        "A merge's --create-config JSON, instead of --model.")
_ADAPTERS = flags.DEFINE_list("adapters", [], ".lora files applied at run time (parent, child).")
_WEIGHTS = flags.DEFINE_list("weights", [], "One weight per adapter (default 1 each).")
_MODE = flags.DEFINE_enum("blend_mode", "additive", list(lora.BLEND_MODES), "How weights combine.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "samples", "Folder for the MIDI files.")
_N = flags.DEFINE_integer("n_samples", 4, "Files to write.")
_LENGTH = flags.DEFINE_integer("length", 256, "New tokens per file (prompt not counted).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "0 decodes greedily.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k likeliest tokens; 0 keeps all.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass; 1 keeps all.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_PRIMER = flags.DEFINE_string("primer", "", "MIDI file whose tokens prompt the model.")
_PRIMER_BARS = flags.DEFINE_integer("primer_bars", 0, "Bars of the primer to keep; 0 keeps all.")
_PROGRAM = flags.DEFINE_string("program", "", "Instrument of sampled notes: a General MIDI "
                               "program 0..127 or 'drums'; empty keeps the model's choice.")
_MIN_BARS = flags.DEFINE_integer("min_bars", 0, "Hold EOS back until this many bars (the "
                                 "primer's included); 0: the model ends when it will.",
                                 lower_bound=0)
_GRAMMAR = flags.DEFINE_boolean("grammar", True, "Sample only tokens the tokenizer's grammar "
                                "allows; --nogrammar samples freely and keeps valid prefixes.")


def main(args):
  if len(args) > 1:
    raise ValueError(f"unexpected arguments: {args[1:]}")
  if bool(_MODEL.value) == bool(_INFERENCE_CONFIG.value):
    raise ValueError("give exactly one of --model and --inference-config")
  model = _MODEL.value or merging.read_inference_config(_INFERENCE_CONFIG.value)
  weights = [float(w) for w in _WEIGHTS.value] or [1.0] * len(_ADAPTERS.value)
  samples = generation.generate(
      model, _ADAPTERS.value, weights, blend_mode=_MODE.value, output_dir=_OUTPUT_DIR.value,
      n_samples=_N.value, length=_LENGTH.value, temperature=_TEMPERATURE.value,
      top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value, primer=_PRIMER.value,
      primer_bars=_PRIMER_BARS.value, program=token_grammar.parse_program(_PROGRAM.value),
      grammar=_GRAMMAR.value, min_bars=_MIN_BARS.value)
  for s in samples:
    logging.info("%s: %d tokens, %d notes%s%s", s.path, s.n_tokens, s.n_notes,
                 ", ended" if s.ended else "", f"; {s.problem}" if s.problem else "")


if __name__ == "__main__":
  cli.run(main, "generate")
