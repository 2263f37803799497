"""Which text encoder a LoRAW run uses: the user's frozen T5, or the byte-token embedding.

T5 when the user gives a T5 folder (`--t5-dir`) and the model config names a T5 prompt
conditioner: the model then takes T5's output, computed once per prompt outside the trained
tree (`lora_jax.data.t5.prompts`). Without the folder, the prompt goes through a small trainable
embedding over the project's byte tokenizer, which is not T5, and the log says so.
"""

from absl import logging

from lora_jax.data.t5 import prompts as t5_prompts
from lora_jax.loraw import model_config


def load(mc: model_config.ModelConfig, t5_dir: str) -> t5_prompts.T5Prompts | None:
  """The user's T5 (frozen, outside the trained tree) when given, else None: the byte-token
  embedding, which the log names plainly."""
  if not t5_dir:
    if mc.text_encoder_name:
      logging.info("text: the model config's T5 conditioner (%s) is replaced by a small trainable "
                   "embedding over the project's byte tokenizer, not T5 (give --t5-dir to use "
                   "T5)", mc.text_encoder_name)
    return None
  if not mc.text_encoder_name:
    raise model_config.ModelConfigError(
        f"--t5-dir {t5_dir}: the model config has no 'prompt' conditioner of type t5")
  prompts = t5_prompts.T5Prompts(t5_dir, mc.model_fields["text_len"], mc.text_encoder_name)
  logging.info("text: frozen T5 from %s (%s, width %d), its output computed once per prompt",
               t5_dir, mc.text_encoder_name, prompts.width)
  return prompts
