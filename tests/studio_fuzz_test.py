"""A bounded schemathesis run over the studio's OpenAPI description, through the real app: no
request it generates gets a server error (500), and every reply is one JSON error or a documented
body. The worker is not started (no lifespan), so a fuzzed train-lora that found a dataset could
only queue a job, never run one; random ids find none anyway."""

import hypothesis
import schemathesis

from lora_jax.studio import app as app_lib



def test_no_server_errors(tmp_path):
  app = app_lib.create_app(app_lib.Settings(root=str(tmp_path / "root")))
  schema = schemathesis.openapi.from_asgi("/openapi.json", app)
  operations = [result.ok() for result in schema.get_all_operations()]
  assert len(operations) == 24  # 22 paths, two of them with GET and DELETE

  for operation in operations:
    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(max_examples=12, derandomize=True, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def fuzz(case):
      response = case.call()
      assert response.status_code < 500, (operation.label, response.status_code, response.text)
      if response.status_code >= 400:
        assert list(response.json()) == ["error"], (operation.label, response.text)

    fuzz()
