r"""The training studio: the API and the web GUI on one port, training with the project's launchers.

python launch/studio.py --root=studio_data --port=7860

Open http://127.0.0.1:7860/ (the GUI) or /docs (the API). State and files live under --root; a
restart finds jobs the last server left running and resumes them. --song_base=PATH (a song
model.pt) turns on the song model's LoRA jobs. Listening on another address
needs --allow_remote and a --token (or STUDIO_TOKEN), which every request must then carry.
"""

import os

from absl import flags
from absl import logging

from lora_jax import cli
from lora_jax.studio import jobs, serve

_ROOT = flags.DEFINE_string("root", "studio_data", "Folder of the studio's database and files.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
_PORT = flags.DEFINE_integer("port", 7860, "Port to listen on.")
_ALLOW_REMOTE = flags.DEFINE_bool("allow_remote", False, "Allow a --host other machines reach.")
_TOKEN = flags.DEFINE_string("token", None, "Token every request must carry (default: "
                             "$STUDIO_TOKEN); required with --allow_remote.")
_BASE = flags.DEFINE_string("base_model", str(jobs.DEFAULT_BASE), "Base model the adapters train "
                            "over.")
_SONG_BASE = flags.DEFINE_string("song_base", "", "The song model song jobs train LoRA over: a "
                                 "SongGeneration model.pt, a merged or fully fine-tuned "
                                 "train_song model, or its folder (none: song jobs are off).")
_AUTO_RESUME = flags.DEFINE_bool("auto_resume", True, "Resume jobs a restart interrupted.")


def main(args):
  if len(args) > 1:
    raise ValueError(f"unexpected arguments: {args[1:]}")
  token = _TOKEN.value if _TOKEN.value is not None else os.environ.get("STUDIO_TOKEN", "")
  logging.info("studio: root %s, base %s", os.path.abspath(_ROOT.value), _BASE.value)
  serve.serve(_ROOT.value, _HOST.value, _PORT.value, _ALLOW_REMOTE.value, token, _BASE.value,
              _AUTO_RESUME.value, _SONG_BASE.value)


if __name__ == "__main__":
  cli.run(main, "studio")
