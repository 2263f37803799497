"""The song model the studio's song jobs train LoRA over: `--song_base=PATH`, checked at start.

No song base ships (the released SongGeneration checkpoint is gigabytes and downloads), so the
user names one. PATH is
  - a `model.pt` (SongGeneration's, or one `launch/merge_song_adapter.py` or a full fine-tune of
    `launch/train_song.py` wrote), or the folder holding it;
  - a train_song run folder whose `checkpoints/model.pt` is its full fine-tune.
A `song_model.json` beside the model.pt (model_record.py; train_song and the merge write it)
gives the model's sizes, its audio codec and its text tokenizer: the studio's jobs then tokenize
the user's clips with that codec, so the codes mean what the base learned. A bare model.pt (the
original's) has the sizes of configs/song_lm.py and no codec of ours: each job fits one on its
clips, as `launch/prepare_song_data.py` does. A LoRA run is refused (merge it first).

`resolve` reads the model once, strictly, as train_song will (every key and shape), so a wrong
file is one error line when the studio starts, not a failed job later.
"""

import dataclasses
import os

from lora_jax import errors
from lora_jax.families import song_lm as song_family
from lora_jax.interop import song_lm_weights
from lora_jax.interop.flax_weights import WeightFileError
from lora_jax.models.song import lm as song_lm
from lora_jax.song import codec as codec_lib
from lora_jax.song import model_record
from lora_jax.train import config as config_lib

REPO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "song_lm.py")


class SongBaseError(errors.UserError):
  """A --song_base the studio cannot train over."""


@dataclasses.dataclass(frozen=True)
class SongBase:
  model_pt: str  # absolute path of the model.pt
  model: song_family.SongConfig
  codec_path: str  # the codec its songs were tokenized with; '' = each job fits one
  text_tokenizer: str  # a Qwen2 tokenizer.json; '' = the byte-level default
  sample_rate: int  # the codec's, or 0 (prepare_song_data's default)
  n_mels: int
  separator: str

  def describe(self) -> dict:
    m = self.model
    return {"model_pt": self.model_pt, "dim": m.dim, "num_layers": m.num_layers,
            "code_size": m.code_size, "frames": m.frames,
            "codec": self.codec_path or "fitted per job on its clips",
            "text_tokenizer": self.text_tokenizer or "byte-level default"}


def _model_pt(path: str) -> str:
  if os.path.isfile(path):
    if not path.endswith((".pt", ".pth")):
      raise SongBaseError(f"--song_base {path} is not a model.pt (SongGeneration's, a merged "
                          "adapter's or a full fine-tune's)")
    return path
  if not os.path.isdir(path):
    raise SongBaseError(f"--song_base {path}: no such file or folder")
  for candidate in ("model.pt", os.path.join("checkpoints", "model.pt")):
    if os.path.isfile(os.path.join(path, candidate)):
      return os.path.join(path, candidate)
  adapter = os.path.join(path, "checkpoints", "adapter")
  if os.path.isdir(adapter):
    raise SongBaseError(f"--song_base {path} is a LoRA run of train_song: merge its adapter "
                        f"into a whole model first (python launch/merge_song_adapter.py "
                        f"--adapter={adapter} --output=merged/model.pt) and name that")
  raise SongBaseError(f"--song_base {path} holds neither model.pt nor checkpoints/model.pt")


def resolve(path: str) -> SongBase:
  """The song base at `path`, its model read strictly; SongBaseError saying what is wrong."""
  model_pt = os.path.abspath(_model_pt(path))
  folder = os.path.dirname(model_pt)
  codec_path = text_tokenizer = ""
  described = "configs/song_lm.py (no song_model.json beside it)"
  if os.path.isfile(os.path.join(folder, model_record.NAME)):
    record = model_record.read(folder, model_pt)
    described = f"its {model_record.NAME}"
    model, codec_path, text_tokenizer = record.model, record.codec_path, record.text_tokenizer
    for what, file in (("codec", codec_path), ("text tokenizer", text_tokenizer)):
      if file and not os.path.isfile(file):
        raise SongBaseError(f"--song_base {model_pt}: its {model_record.NAME} names the {what} "
                            f"{file}, which does not exist")
  else:
    defaults = config_lib.load_config_dict(REPO_CONFIG)
    model = config_lib.from_mapping(song_family.SongConfig, defaults.model, "config.model")
  try:
    song_lm_weights.load_model_pt(model_pt, song_lm.abstract_params(model.lm_config("float32")))
  except WeightFileError as e:
    raise SongBaseError(f"--song_base {model_pt} does not fit the model {described} "
                        f"describes: {e}") from None
  rate = mels = 0
  separator = ""
  if codec_path:
    codec = codec_lib.load(codec_path)
    rate, mels, separator = codec.sample_rate, codec.n_mels, codec.separator
  return SongBase(model_pt, model, codec_path, text_tokenizer, rate, mels, separator)
