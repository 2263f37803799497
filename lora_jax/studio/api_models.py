"""Request bodies of the studio's API: every field typed and bounded, unknown fields refused."""

from typing import ClassVar, Literal

import pydantic


class _Strict(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")


class TrainRequest(_Strict):
  """Start a job: a parent adapter on a dataset's genre, or a child adapter on its sub-style over
  a finished parent adapter (type 'midi'); or the song model's LoRA on a song dataset over the
  studio's --song_base (type 'song'). Hyperparameters left out take configs/
  lora_adapter_config.py's (midi) or the SongGeneration fork's train_config.yaml defaults (song)."""
  name: str = pydantic.Field(min_length=1, max_length=80, description="the adapter's label")
  dataset_id: str = pydantic.Field(pattern=r"^[0-9a-f]{16}$")
  type: Literal["midi", "song"] = "midi"
  level: Literal["parent", "child"] = "parent"
  parent_adapter_id: str | None = pydantic.Field(None, pattern=r"^[0-9a-f]{16}$")
  epochs: int | None = pydantic.Field(None, ge=1, le=1000)
  batch_size: int | None = pydantic.Field(None, ge=1, le=512)
  learning_rate: float | None = pydantic.Field(None, gt=0, le=1)
  rank: int | None = pydantic.Field(None, ge=1, le=256)
  alpha: float | None = pydantic.Field(None, gt=0, le=4096)
  seq_len: int | None = pydantic.Field(None, ge=8, le=512, description="tokens per window")
  log_every: int | None = pydantic.Field(None, ge=1, le=10000, description="steps per metrics row")
  val_fraction: float | None = pydantic.Field(None, gt=0, lt=1, description=(
      "song: the share of clips that validate (split by a hash of each clip)"))
  warmup_steps: int | None = pydantic.Field(None, ge=0, le=100000, description="song: LR warm-up")

  MIDI_ONLY: ClassVar[tuple[str, ...]] = ("seq_len",)
  SONG_ONLY: ClassVar[tuple[str, ...]] = ("val_fraction", "warmup_steps")

  def params(self) -> dict:
    return self.model_dump(include={"epochs", "batch_size", "learning_rate", "rank", "alpha",
                                    "seq_len", "log_every", "val_fraction", "warmup_steps"})


class BuildRequest(_Strict):
  """Build a dataset offline (sources.py): a corpus genre, bundled performances, or a folder."""
  name: str = pydantic.Field(min_length=1, max_length=80, description="the dataset's label")
  source: Literal["corpus", "performances", "folder"]
  style: str = pydantic.Field(pattern=r"^[A-Za-z0-9_]+(/[A-Za-z0-9_]+)?$", max_length=80,
                              description="corpus: a genre or genre/sub_style of the corpus; "
                              "otherwise the style the files are packed as")
  collection: Literal["maestro", "pop909"] | None = pydantic.Field(
      None, description="performances: which collection")
  path: str | None = pydantic.Field(None, min_length=1, max_length=4096,
                                    description="folder: an absolute path on the server")
  max_pieces: int | None = pydantic.Field(None, ge=1, le=100000,
                                          description="corpus: at most this many pieces a style")


class ListenRequest(_Strict):
  """Render a short sample with an adapter and with the base alone, from the same seed."""
  seed: int = pydantic.Field(0, ge=0, le=2**31 - 1)


class ClipMeta(_Strict):
  """A song clip's row of tab 2's table; the columns given replace the kept ones."""
  genre: str | None = pydantic.Field(None, max_length=400)
  bpm: str | None = pydantic.Field(None, max_length=400)
  key: str | None = pydantic.Field(None, max_length=400)
  mood: str | None = pydantic.Field(None, max_length=400)
  instruments: str | None = pydantic.Field(None, max_length=400)
  description: str | None = pydantic.Field(None, max_length=400)
  lyrics: str | None = pydantic.Field(None, max_length=8000, description=(
      "with section tags: [verse] ... [chorus] ..."))


class JobRef(_Strict):
  """Names a job."""
  job_id: str = pydantic.Field(pattern=r"^[0-9a-f]{16}$")


class Error(pydantic.BaseModel):
  """Every error reply: one message."""
  error: str
