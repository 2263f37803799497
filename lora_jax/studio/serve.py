"""Serving the app: the bind checks first, then uvicorn on one process (the worker is a thread of
it, so there is one queue)."""

import uvicorn

from lora_jax.studio import app as app_lib
from lora_jax.studio import security


def serve(root: str, host: str, port: int, allow_remote: bool, token: str, base_model: str,
          auto_resume: bool, song_base: str = "") -> None:
  """Serve the studio until interrupted; raises SecurityError before listening where unsafe."""
  security.check_bind(host, allow_remote, token)
  settings = app_lib.Settings(root=root, base_model=base_model, token=token,
                              auto_resume=auto_resume, song_base=song_base)
  uvicorn.run(app_lib.create_app(settings), host=host, port=port, log_level="info",
              timeout_graceful_shutdown=5)
