"""Property-based run of the whole v1 API against its own OpenAPI document (schemathesis, in
process through the ASGI app): for generated queries, paths and bodies, no response is a 5xx,
every status is documented, and every body matches its documented schema.

Writes run with a valid token so they get past authentication and reach the store; the run
has its own store, so whatever it deletes or relabels touches no other test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.server import create_app
from tests.app.conftest import BACKENDS, Store, built_store

EXAMPLES = 15  # per operation and mode: about two minutes in all on a laptop
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.fixture(scope="module", params=BACKENDS)
def fuzz_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    # Postgres refuses what SQLite takes (NUL bytes in text, integers beyond the column's
    # range), so the same run goes against both.
    with built_store(request.param, tmp_path_factory.mktemp(f"fuzz-{request.param}"), units=6, images=12) as built:
        yield built


@pytest.fixture(scope="module")
def api_schema(fuzz_store: Store) -> Iterator[Any]:
    app = create_app(fuzz_store.settings())
    yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    app.state.model_service.close()
    app.state.engine.dispose()


def _run(operation: Any, strategy: Any, token: str, failures: list[str], examples: int, statuses: Counter) -> None:
    # schemathesis's pytest loader (from_fixture) does not run under pytest 9, so the cases come
    # from its Hypothesis strategies directly; the checks are the same.
    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def check(case: Any) -> None:
        response = case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
        statuses[response.status_code] += 1

    try:
        check()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # schemathesis raises exception groups; collect all, report all
        if "Unable to satisfy assumptions" in str(error):
            return  # no invalid input exists (e.g. only free-text path parameters): nothing to test
        failures.append(f"{operation.label}: {str(error)[:1500]}")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_api_conforms_to_its_schema(api_schema: Any, fuzz_store: Store, mode: GenerationMode) -> None:
    failures: list[str] = []
    statuses: Counter = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        _run(operation, operation.as_strategy(generation_mode=mode), fuzz_store.token, failures, EXAMPLES, statuses)
        # The same operation on a real model and layer, so generated indices and bodies reach real rows.
        names = {p.name for p in operation.path_parameters}
        if mode is GenerationMode.POSITIVE and {"model_id", "layer"} <= names:
            real = operation.as_strategy(generation_mode=mode, path_parameters={"model_id": "toy-rn", "layer": "layer4"})
            _run(operation, real, fuzz_store.token, failures, EXAMPLES, statuses)
    assert not failures, "\n\n".join(failures)
    print(f"{mode.value}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= 150 and not any(code >= 500 for code in statuses)
    if mode is GenerationMode.POSITIVE:
        assert statuses[200] >= 30  # the run reached real data, not only refusals


def test_known_paths_reach_real_data(fuzz_store: Store) -> None:
    """The generated run mostly meets 404s for made-up ids; the real ones are checked here
    against the same response models."""
    from fastapi.testclient import TestClient

    from app.routes import schemas as s

    with TestClient(create_app(fuzz_store.settings())) as client:
        layer = fuzz_store.populated.models["toy-vit"]["layer"]
        for path, model in (
            ("/api/v1/models", s.ModelList), ("/api/v1/models/toy-rn", s.ModelDetail),
            ("/api/v1/models/toy-rn/layer4", s.LayerPage), ("/api/v1/models/toy-rn/layer4/0", s.UnitPage),
            (f"/api/v1/models/toy-vit/{layer}/3", s.UnitPage), ("/api/v1/models/toy-rn/layer4/300", s.UnitPage),
            ("/api/v1/search?q=red", s.SearchPage), ("/api/v1/words?q=red", s.WordsPage), ("/api/v1/collections", s.CollectionList),
            ("/api/v1/collections/colour-units", s.CollectionDetail), ("/api/v1/jobs", s.JobsPage), ("/api/v1/probe", s.ProbeForm),
        ):
            r = client.get(path)
            assert r.status_code == 200, (path, r.text[:300])
            model.model_validate(r.json(), strict=False)
        probe = client.post("/api/v1/probe", data={"model": "toy-rn", "dataset": "synthetic-world", "position": "1"})
        s.ProbeResult.model_validate(probe.json())
        assert Path(fuzz_store.blob_url).exists()


NUL = "a\x00b"  # Postgres text cannot hold it; SQLite's can


@pytest.mark.parametrize("path", [
    "/api/v1/search?q=a%00b", "/api/v1/search?q=red&model=a%00b", "/api/v1/words?q=a%00b", "/api/v1/models/a%00b",
    "/api/v1/models/toy-rn/a%00b", "/api/v1/models/toy-rn/a%00b/0", "/api/v1/collections/a%00b", "/api/v1/jobs?model=a%00b",
    "/api/v1/probe?model=a%00b", "/api/v1/probe?dataset=a%00b", "/search?q=a%00b", "/models/a%00b", "/probe?model=a%00b",
    "/api/v1/search/prompt?text=red&model=a%00b",
])
def test_nul_bytes_in_reads_are_never_a_server_error(fuzz_store: Store, path: str) -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(fuzz_store.settings()), raise_server_exceptions=False) as client:
        r = client.get(path)
    # SQLite may answer (no results, or "no such model"); Postgres refuses the text. Never a 5xx.
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400 and path.startswith("/api/"):
        assert r.json()["reason"], r.text
    if fuzz_store.backend == "postgres" and path.startswith("/api/v1/search?q="):
        assert r.status_code == 422 and r.json()["reason"] == "nul-byte"


def test_nul_bytes_in_writes_are_refused(fuzz_store: Store) -> None:
    from fastapi.testclient import TestClient

    auth = {"Authorization": f"Bearer {fuzz_store.token}"}
    with TestClient(create_app(fuzz_store.settings()), raise_server_exceptions=False) as client:
        answers = [
            client.post("/api/v1/probe", data={"model": NUL, "dataset": "synthetic-world", "position": "1"}),
            client.post("/api/v1/probe", data={"model": "toy-rn", "dataset": NUL, "position": "1"}),
            client.post("/api/v1/models/toy-rn/layer4/3/notes", json={"text": NUL}, headers=auth),
            client.post("/api/v1/collections", json={"id": "nul-test", "title": NUL}, headers=auth),
            client.post("/api/v1/collections/colour-units/units", json={"model": NUL, "layer": "layer4", "index": 1}, headers=auth),
            client.post("/api/v1/collections/colour-units/units",
                        json={"model": "toy-rn", "layer": "layer4", "index": 1, "note": NUL}, headers=auth),
            client.delete("/api/v1/collections/colour-units/units/a%00b/layer4/1", headers=auth),
        ]
    for r in answers:
        assert 400 <= r.status_code < 500 and r.json()["reason"], (r.request.method, r.request.url, r.status_code, r.text[:300])
    assert answers[5].json()["reason"] == "bad-note"  # a collection's note is checked like a unit's
    if fuzz_store.backend == "postgres":
        assert answers[0].json()["reason"] == "nul-byte"
