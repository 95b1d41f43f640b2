"""Generated requests against the served OpenAPI schema (schemathesis): zero 5xx, zero crashes.

The app is the real FastAPI app of `serve.app.create_app` over a tiny model (in-process ASGI,
no Ray, no sockets). schemathesis derives valid and invalid requests (positive and negative modes)
for every operation of `/openapi.json` and runs its checks on each response: no server error,
documented status codes and content types, responses matching their schemas, invalid data
rejected. `positive_data_acceptance` is excluded: an unknown item id is schema-valid but rightly
refused with a 422. The last test checks how many cases ran, so a silently empty fuzz fails.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from serve_helpers import tiny_versions

from outfitter.data import load_catalog
from outfitter.platform.serve.app import create_app
from outfitter.platform.serve.core import LocalBackend, load_state
from outfitter.platform.serve.schemas import Limits
from outfitter.platform.serve.service import CatalogService

EXAMPLES_PER_OPERATION = 40
MIN_CASES = 250  # 7 operations x 2 modes; fewer means the fuzz silently generated (almost) nothing
# Small limits keep generated bodies cheap; the rules exercised are the same.
LIMITS = Limits(max_body_bytes=64 * 1024, max_image_bytes=16 * 1024, max_image_pixels=64 * 64)
# no parameters, or only a free string: there is no invalid request to generate
NOTHING_TO_INVALIDATE = {"GET /v1/model", "GET /healthz", "GET /v1/items/{item_id}/image"}
RUN: dict = {"cases": 0, "statuses": {}, "operations": set()}
FUZZ = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,  # the same requests on every run: a failure reproduces
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def api_schema(synth_dir, tmp_path_factory):
    versions = tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)
    catalog = load_catalog(synth_dir)
    backend = LocalBackend(load_state(str(versions[0]), synth_dir, device="cpu", catalog=catalog))
    app = create_app(CatalogService(catalog, backend, LIMITS), LIMITS, static_dir=None)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return schema


def _fuzz(operation, mode):
    """A hypothesis test sending `operation`'s generated requests (of `mode`) to the app."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @FUZZ
    def fuzz(case):
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
        RUN["cases"] += 1
        RUN["statuses"][response.status_code] = RUN["statuses"].get(response.status_code, 0) + 1
        RUN["operations"].add(operation.label)
        assert response.status_code < 500, (response.status_code, response.text[:300])
        assert "Traceback" not in response.text

    return fuzz


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_never_get_a_server_error(api_schema, mode):
    """Every operation of the schema, `EXAMPLES_PER_OPERATION` generated requests each."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 7, [op.label for op in operations]
    for operation in operations:
        try:
            _fuzz(operation, mode)()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE and operation.label in NOTHING_TO_INVALIDATE, (
                operation.label
            )


def test_fuzz_ran_enough_cases():
    """Runs after the fuzz above (file order): the count goes into RELIABILITY.md."""
    print(
        f"\nschemathesis: {RUN['cases']} cases over {len(RUN['operations'])} operations, "
        f"statuses {sorted(RUN['statuses'].items())}"
    )
    assert RUN["cases"] >= MIN_CASES, RUN
    assert not any(status >= 500 for status in RUN["statuses"]), RUN
