"""The song tokens' audio codec: waveform <-> [3, T] codes at 25 Hz, fitted on the user's audio.

SongGeneration's tokenizers (a neural codec and a separation-aware one) download their weights at
run time; nothing like them exists offline. This default is the simplest codec that keeps the
token contract (one code per stream per 1/25 s, codes < `model.code_size`) and can be fitted on
any folder of songs in minutes on a CPU:

- Analysis: log-mel frames at 25 Hz (hop = sample_rate / 25, window the next power of two at or
  above two hops), standardised per mel band.
- Quantiser: a 2-level residual VQ per stream, both levels k-means codebooks (`kmeans.py`) of
  sizes k1 x k2 <= code_size (`levels_for`: 128 x 128 for 16384, 8 x 8 for 64). One frame is one
  code, code = i1 * k2 + i2, so the LM's one-token-per-frame-per-stream layout is kept; the
  second level quantises what the first left. (A product quantiser over two halves of the mel
  bands would give the same code count; the residual one spends both levels on the whole
  spectrum instead of fixing which bands each level may describe.)
- Synthesis: the decoded log-mel is inverted to a linear magnitude (least squares through the
  mel filters, clipped at zero), interpolated to a hop four times finer, and given a phase by Griffin-Lim
  (fixed seed: the same codes give the same samples). It sounds rough and phasey: the codes carry
  no phase and 25 Hz frames smear attacks. Measured figures are in README.md (song model).

The three streams (mixed, vocal, accompaniment) each have their own codebooks, fitted on that
stream's audio; the vocal/accompaniment split is `separate.py`'s, named in the file.

File: one `.safetensors` holding, per stream, `{stream}.mean`, `{stream}.scale`,
`{stream}.codebook0`, `{stream}.codebook1`, and in its metadata `lora_jax_song_codec`, a JSON
object (format version, sample rate, mel bands, levels, separator). No pickle.
"""

import dataclasses
import hashlib
import json
import math

import numpy as np
import safetensors
import safetensors.numpy

from lora_jax import atomic
from lora_jax.song import kmeans
from lora_jax.song import separate

FRAME_RATE = 25
STREAMS = ("mixed", "vocal", "accompaniment")
FORMAT_VERSION = 1
_METADATA_KEY = "lora_jax_song_codec"
_FLOOR = 1e-5  # mel power floor before the log: -11.5, far below any audible band
_UPSAMPLE = 4  # Griffin-Lim runs at hop / 4: phase from overlapping frames, not 25 Hz ones


class CodecFileError(ValueError):
  """A codec file that is missing, malformed, or of another format."""


def levels_for(code_size: int) -> tuple[int, int]:
  """(k1, k2): the two codebook sizes, powers of two with k1 * k2 <= code_size, k1 >= k2."""
  if code_size < 4:
    raise ValueError(f"code_size {code_size} leaves no room for a 2-level codebook (>= 4)")
  bits = int(math.floor(math.log2(code_size)))
  return 2 ** (bits - bits // 2), 2 ** (bits // 2)


def check_sample_rate(sample_rate: int) -> int:
  """The rate itself, if 25 Hz frames and the 4x finer synthesis hop are whole samples."""
  if sample_rate <= 0 or sample_rate % (FRAME_RATE * _UPSAMPLE):
    raise ValueError(f"sample rate {sample_rate} must be a positive multiple of "
                     f"{FRAME_RATE * _UPSAMPLE} (25 Hz frames, synthesis at 100 Hz)")
  return sample_rate


@dataclasses.dataclass(frozen=True)
class StreamQuantiser:
  """One stream's standardisation and 2-level residual codebooks."""

  mean: np.ndarray  # float32 [n_mels]
  scale: np.ndarray  # float32 [n_mels]
  codebook0: np.ndarray  # float32 [k1, n_mels]
  codebook1: np.ndarray  # float32 [k2, n_mels]

  def quantise(self, logmel_TxM: np.ndarray) -> np.ndarray:
    x = (logmel_TxM - self.mean) / self.scale
    first = kmeans.assign(x, self.codebook0)
    second = kmeans.assign(x - self.codebook0[first], self.codebook1)
    return (first * len(self.codebook1) + second).astype(np.int64)

  def dequantise(self, codes_T: np.ndarray) -> np.ndarray:
    first, second = np.divmod(np.asarray(codes_T, np.int64), len(self.codebook1))
    return (self.codebook0[first] + self.codebook1[second]) * self.scale + self.mean


@dataclasses.dataclass(frozen=True)
class SongCodec:
  """A fitted codec: `encode` / `decode` one stream, `encode_song` a mix into [3, T]."""

  sample_rate: int
  n_mels: int
  separator: str  # a name in separate.SEPARATORS
  streams: dict  # stream name -> StreamQuantiser

  @property
  def hop(self) -> int:
    return self.sample_rate // FRAME_RATE

  @property
  def n_fft(self) -> int:
    return 1 << (2 * self.hop - 1).bit_length()

  @property
  def code_count(self) -> int:
    q = self.streams[STREAMS[0]]
    return len(q.codebook0) * len(q.codebook1)

  def features(self, wave: np.ndarray) -> np.ndarray:
    """float32 [T, n_mels] log-mel frames, T = len(wave) // hop (at least 1)."""
    return log_mel(wave, self.sample_rate, self.n_mels)

  def encode(self, wave: np.ndarray, sample_rate: int, stream: str = "mixed") -> np.ndarray:
    """int64 [T] codes of one stream's audio (already separated for streams 1 and 2)."""
    if sample_rate != self.sample_rate:
      raise ValueError(f"audio at {sample_rate} Hz for a codec fitted at {self.sample_rate} Hz")
    return self.streams[stream].quantise(self.features(wave))

  def encode_song(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """int64 [3, T]: the mix, then its split by the codec's separator."""
    vocal, accompaniment = separate.get(self.separator)(wave, sample_rate)
    return np.stack([self.encode(w, sample_rate, s)
                     for w, s in zip((wave, vocal, accompaniment), STREAMS)])

  def decode(self, codes_T: np.ndarray, stream: str = "mixed", iterations: int = 32
             ) -> np.ndarray:
    """float32 samples [T * hop] of one stream's codes."""
    codes = np.asarray(codes_T)
    if codes.ndim != 1 or codes.min() < 0 or codes.max() >= self.code_count:
      raise ValueError(f"codes must be [T] in 0..{self.code_count - 1}, got shape "
                       f"{list(codes.shape)} range {codes.min()}..{codes.max()}")
    return synthesise(self.streams[stream].dequantise(codes), self.sample_rate, iterations)

  def save(self, path: str) -> None:
    """Write the codec file atomically."""
    tensors = {f"{s}.{f.name}": np.ascontiguousarray(getattr(q, f.name), np.float32)
               for s, q in self.streams.items() for f in dataclasses.fields(q)}
    meta = {"format_version": FORMAT_VERSION, "sample_rate": self.sample_rate,
            "n_mels": self.n_mels, "separator": self.separator,
            "separator_description": separate.describe(self.separator),
            "levels": [len(self.streams[STREAMS[0]].codebook0),
                       len(self.streams[STREAMS[0]].codebook1)],
            "frame_rate": FRAME_RATE, "streams": list(STREAMS)}
    with atomic.atomic_paths(path) as (tmp,):
      safetensors.numpy.save_file(tensors, tmp, metadata={_METADATA_KEY: json.dumps(meta)})


def file_id(path: str) -> str:
  """A short hash of a codec file: token files record which codec made them."""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def load(path: str) -> SongCodec:
  """A codec file written by `SongCodec.save`, checked."""
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      meta = json.loads((f.metadata() or {})[_METADATA_KEY])
      tensors = {k: f.get_tensor(k) for k in f.keys()}
  except FileNotFoundError:
    raise CodecFileError(f"codec file {path} does not exist") from None
  except (KeyError, json.JSONDecodeError):
    raise CodecFileError(f"{path} is a safetensors file but not a song codec (no "
                         f"{_METADATA_KEY} metadata)") from None
  except Exception as e:  # the Rust reader raises SafetensorError for any malformed file
    raise CodecFileError(f"cannot read {path} as a song codec: {e}") from None
  if meta.get("format_version") != FORMAT_VERSION:
    raise CodecFileError(f"{path}: codec format {meta.get('format_version')}, this reads "
                         f"{FORMAT_VERSION}")
  streams = {}
  for s in STREAMS:
    try:
      streams[s] = StreamQuantiser(*(tensors[f"{s}.{f.name}"]
                                     for f in dataclasses.fields(StreamQuantiser)))
    except KeyError as e:
      raise CodecFileError(f"{path} lacks tensor {e.args[0]}") from None
  return SongCodec(int(meta["sample_rate"]), int(meta["n_mels"]), str(meta["separator"]),
                   streams)


def log_mel(wave: np.ndarray, sample_rate: int, n_mels: int) -> np.ndarray:
  """float32 [len // hop, n_mels] natural-log mel power at 25 Hz."""
  import librosa  # the `audio` extra
  hop = sample_rate // FRAME_RATE
  frames = max(1, len(wave) // hop)
  mel = librosa.feature.melspectrogram(
      y=np.asarray(wave, np.float32), sr=sample_rate, n_fft=1 << (2 * hop - 1).bit_length(),
      hop_length=hop, n_mels=n_mels, power=2.0)
  return np.log(np.maximum(mel[:, :frames], _FLOOR)).T.astype(np.float32)


def synthesise(logmel_TxM: np.ndarray, sample_rate: int, iterations: int = 32) -> np.ndarray:
  """Samples [T * hop] whose log-mel approximates `logmel_TxM` (Griffin-Lim, fixed seed)."""
  import librosa
  hop = sample_rate // FRAME_RATE
  n_fft = 1 << (2 * hop - 1).bit_length()
  # The least-squares inverse of the mel filters, clipped at zero: librosa's NNLS inverse
  # (`mel_to_stft`) measured no better here and took 20 s for one second of a pure tone.
  basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=logmel_TxM.shape[1])
  power = np.linalg.pinv(basis) @ np.exp(logmel_TxM.T.astype(np.float64))
  magnitude = np.sqrt(np.maximum(power, 0.0))
  t = len(logmel_TxM)
  # centred frames: a signal of t * hop samples has t * 4 + 1 frames at hop / 4
  position = np.minimum(np.arange(t * _UPSAMPLE + 1) / _UPSAMPLE, t - 1)
  left = np.floor(position).astype(int)
  right = np.minimum(left + 1, t - 1)
  frac = position - left
  fine = magnitude[:, left] * (1 - frac) + magnitude[:, right] * frac
  wave = librosa.griffinlim(fine, n_iter=iterations, hop_length=hop // _UPSAMPLE,
                            win_length=n_fft, n_fft=n_fft, length=t * hop, random_state=0)
  return wave.astype(np.float32)


def fit(features: dict, *, sample_rate: int, n_mels: int, separator: str, code_size: int,
        seed: int = 0, max_frames: int = 50_000) -> SongCodec:
  """A codec fitted on `features` (stream name -> list of [T, n_mels] log-mel arrays), at most
  `max_frames` frames per stream (a fixed random subset beyond that)."""
  separate.get(separator)
  k1, k2 = levels_for(code_size)
  rng = np.random.default_rng(seed)
  streams = {}
  for s in STREAMS:
    x = np.concatenate(features[s]).astype(np.float64)
    if len(x) > max_frames:
      x = x[np.sort(rng.choice(len(x), max_frames, replace=False))]
    mean = x.mean(0)
    scale = np.maximum(x.std(0), 1e-3)
    z = (x - mean) / scale
    first = kmeans.fit(z, k1, rng)
    second = kmeans.fit(z - first[kmeans.assign(z, first)], k2, rng)
    streams[s] = StreamQuantiser(mean.astype(np.float32), scale.astype(np.float32), first,
                                 second)
  return SongCodec(check_sample_rate(sample_rate), n_mels, separator, streams)
