"""Request bodies of the studio's API: every field typed and bounded, unknown fields refused."""

from typing import Literal

import pydantic


class _Strict(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")


class TrainRequest(_Strict):
  """Start a job: a parent adapter on a dataset's genre, or a child adapter on its sub-style over
  a finished parent adapter. Hyperparameters left out take configs/lora_adapter_config.py's."""
  name: str = pydantic.Field(min_length=1, max_length=80, description="the adapter's label")
  dataset_id: str = pydantic.Field(pattern=r"^[0-9a-f]{16}$")
  level: Literal["parent", "child"] = "parent"
  parent_adapter_id: str | None = pydantic.Field(None, pattern=r"^[0-9a-f]{16}$")
  epochs: int | None = pydantic.Field(None, ge=1, le=1000)
  batch_size: int | None = pydantic.Field(None, ge=1, le=512)
  learning_rate: float | None = pydantic.Field(None, gt=0, le=1)
  rank: int | None = pydantic.Field(None, ge=1, le=256)
  alpha: float | None = pydantic.Field(None, gt=0, le=4096)
  seq_len: int | None = pydantic.Field(None, ge=8, le=512, description="tokens per window")
  log_every: int | None = pydantic.Field(None, ge=1, le=10000, description="steps per metrics row")

  def params(self) -> dict:
    return self.model_dump(include={"epochs", "batch_size", "learning_rate", "rank", "alpha",
                                    "seq_len", "log_every"})


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


class JobRef(_Strict):
  """Names a job."""
  job_id: str = pydantic.Field(pattern=r"^[0-9a-f]{16}$")


class Error(pydantic.BaseModel):
  """Every error reply: one message."""
  error: str
