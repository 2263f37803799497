"""The studio's FastAPI app: the API under /api/training/, the GUI at /, OpenAPI at /docs.

Every error is one JSON object `{"error": "<one line>"}` with a fitting status: 400 bad input,
401 no or wrong token, 404 unknown id, 409 in use, 411/413 missing or too large a body, 422 a body
that does not fit its model, 501 an audio function this checkout lacks, 503 a render this machine
cannot make (no fluidsynth or soundfont), 500 a bug (its traceback
goes to the server log, never to the client). Nothing here serves files from the internet: the
GUI is plain HTML/JS in static/, and /docs uses the Swagger UI files of the swagger-ui-bundle
package.
"""

import contextlib
import dataclasses
import os
import pathlib
import shutil

import fastapi
from fastapi import responses, staticfiles
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.exceptions import HTTPException
from absl import logging

from lora_jax.studio import api_models, audio_bridge, jobs, listen, security, song_base, sources
from lora_jax.studio import worker
from lora_jax.studio import db as db_lib
from lora_jax.studio import storage as storage_lib

STATIC = pathlib.Path(__file__).resolve().parent / "static"
DB_FILE = "studio.sqlite"
_ERRORS = {404: {"model": api_models.Error, "description": "unknown id"},
           400: {"model": api_models.Error, "description": "bad input"},
           401: {"model": api_models.Error, "description": "token required"},
           413: {"model": api_models.Error, "description": "body too large"},
           411: {"model": api_models.Error, "description": "body without a Content-Length"},
           409: {"model": api_models.Error, "description": "in use"},
           503: {"model": api_models.Error, "description": "no fluidsynth or soundfont here"}}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a studio serves and how."""
  root: str
  base_model: str = str(jobs.DEFAULT_BASE)
  token: str = ""  # required on every request when set
  limits: security.Limits = security.Limits()
  auto_resume: bool = True  # queue jobs a restart interrupted again
  worker_env: tuple[tuple[str, str], ...] = ()  # set in the training processes' environment
  performances_dir: str = str(jobs.REPO / ".cache" / "performances")  # scripts/setup.sh fills it
  song_base: str = ""  # the song model song jobs train over (song_base.py); '' = none


class Studio:
  """The state one app serves: database, files, worker."""

  def __init__(self, settings: Settings):
    if not os.path.isfile(settings.base_model):
      raise FileNotFoundError(f"base model {settings.base_model}: no such file")
    self.song_base = song_base.resolve(settings.song_base) if settings.song_base else None
    os.makedirs(settings.root, exist_ok=True)
    self.settings = settings
    self.store = storage_lib.Storage(settings.root)
    self.db = db_lib.Database(os.path.join(self.store.root, DB_FILE))
    env = dict(os.environ, **dict(settings.worker_env))
    self.worker = worker.Worker(self.db, self.store, env, settings.auto_resume)
    self.builder = sources.Builder(self.db, self.store, settings.limits,
                                   settings.performances_dir)
    self.listener = listen.Listener(self.store.root, settings.base_model)

  def sweep(self) -> int:
    """Remove blobs and dataset folders no row names (after a delete, or what a crash between
    a file and its row left); how many blobs went."""
    with self.store.lock:
      referenced = {r["sha256"] for r in self.db.all("SELECT sha256 FROM files UNION "
                                                     "SELECT sha256 FROM adapters")}
      folders = os.path.join(self.store.root, "datasets")
      known = {r["id"] for r in self.db.all("SELECT id FROM datasets")}
      for name in os.listdir(folders) if os.path.isdir(folders) else []:
        if name not in known and name.isalnum():
          self.store.remove_folder("datasets", name)
      return self.store.sweep(referenced)

  def job_view(self, job: dict) -> dict:
    """A job's row with its live progress."""
    job = {k: v for k, v in job.items() if k not in ("argv", "output_dir", "pid")}
    job["params"] = db_lib.loads(job["params"])
    dataset = self.db.one("SELECT style FROM datasets WHERE id = ?", (job["dataset_id"],))
    if dataset:
      style = dataset["style"] if job["level"] == "child" else dataset["style"].split("/")[0]
      run = jobs.run_dir(job["level"], style, self.store.folder("jobs", job["id"]))
      job.update(jobs.progress(run))
    return job

  def run_of(self, job_id: str) -> tuple[dict, str]:
    job = self.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
    if job is None:
      raise db_lib.NotFound(f"no job {job_id}")
    dataset = self.db.one("SELECT style FROM datasets WHERE id = ?", (job["dataset_id"],))
    style = dataset["style"] if dataset else ""
    style = style if job["level"] == "child" else style.split("/")[0]
    return job, jobs.run_dir(job["level"], style, self.store.folder("jobs", job["id"]))


def _error(status: int, message: str) -> responses.JSONResponse:
  return responses.JSONResponse({"error": message}, status_code=status)


def _install_errors(app: fastapi.FastAPI) -> None:
  @app.exception_handler(HTTPException)
  async def http_error(request, e: HTTPException):
    return _error(e.status_code, str(e.detail))

  @app.exception_handler(RequestValidationError)
  async def validation_error(request, e: RequestValidationError):
    first = e.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return _error(422, f"{where}: {first.get('msg', 'invalid')}{more}")

  @app.exception_handler(db_lib.NotFound)
  async def not_found(request, e: db_lib.NotFound):
    return _error(404, str(e))

  @app.exception_handler(audio_bridge.Missing)
  async def audio_missing(request, e):
    return _error(501, str(e))

  @app.exception_handler(listen.Unavailable)
  async def no_renderer(request, e):
    return _error(503, str(e))

  @app.exception_handler(ValueError)  # DatasetError, JobError, a state that forbids the action
  async def bad_input(request, e: ValueError):
    return _error(409 if isinstance(e, db_lib.InUse) else 400, str(e))

  @app.exception_handler(Exception)
  async def bug(request, e: Exception):
    logging.error("studio: %s %s failed", request.method, request.url.path, exc_info=e)
    return _error(500, f"internal error ({type(e).__name__}); the server log has the details")


def _guard(app: fastapi.FastAPI, settings: Settings) -> None:
  """Token on every request; a Content-Length within the cap on every body."""

  @app.middleware("http")
  async def guard(request: fastapi.Request, call_next):
    given = request.headers.get(security.TOKEN_HEADER) or request.query_params.get("token")
    if not security.token_ok(settings.token, given):
      return _error(401, f"this studio needs its token in the {security.TOKEN_HEADER} header "
                         f"(or ?token= in a link)")
    if request.method in ("POST", "PUT", "PATCH"):
      length = request.headers.get("content-length")
      if length is None and request.headers.get("transfer-encoding"):
        return _error(411, "a request body needs a Content-Length header")
      if length is not None:
        if not length.isdigit():
          return _error(400, f"Content-Length {length!r} is not a number")
        if int(length) > settings.limits.max_request_bytes:
          return _error(413, f"request body of {int(length):,} bytes is over the limit of "
                             f"{settings.limits.max_request_bytes:,}")
    return await call_next(request)


def create_app(settings: Settings) -> fastapi.FastAPI:
  """The app; its worker starts and stops with the app's lifespan."""
  studio = Studio(settings)

  @contextlib.asynccontextmanager
  async def lifespan(app):
    for name in os.listdir(studio.store.root):  # scratch folders of requests a crash cut short
      if name.startswith((".upload.", ".audio.", ".listen.")):
        shutil.rmtree(os.path.join(studio.store.root, name), ignore_errors=True)
    studio.sweep()
    studio.builder.start()
    studio.worker.start()
    yield
    studio.worker.close()
    studio.db.close()

  app = fastapi.FastAPI(title="lora_jax training studio", docs_url=None, redoc_url=None,
                        lifespan=lifespan, description=__doc__)
  app.state.studio = studio
  _install_errors(app)
  _guard(app, settings)
  _docs(app)
  from lora_jax.studio import routes  # the API, on this app's studio
  app.include_router(routes.router(studio, _ERRORS), prefix="/api/training")
  app.mount("/", staticfiles.StaticFiles(directory=STATIC, html=True), name="gui")
  return app


def _docs(app: fastapi.FastAPI) -> None:
  try:
    import swagger_ui_bundle
  except ModuleNotFoundError:  # /openapi.json still describes the API
    return
  app.mount("/docs-assets", staticfiles.StaticFiles(directory=swagger_ui_bundle.swagger_ui_path),
            name="docs-assets")

  @app.get("/docs", include_in_schema=False)
  async def docs(request: fastapi.Request):
    token = request.query_params.get("token")
    openapi = "/openapi.json" + (f"?token={token}" if token else "")
    return get_swagger_ui_html(openapi_url=openapi, title="lora_jax studio API",
                               swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                               swagger_css_url="/docs-assets/swagger-ui.css",
                               swagger_favicon_url="/docs-assets/favicon-32x32.png")
