"""Reading /metrics in tests: the exposition parsed by prometheus_client's own parser.

Counters and histograms add up over the whole test run (every process of the run writes to one
multiprocess directory), so tests compare a value before and after what they do."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families


def scrape(client: Any) -> str:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.ADMIN_API_KEY}")
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, its labels) → value, for every sample of the exposition."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(body: str, name: str, **labels: str) -> float:
    """A sample's value (0 when the series is not there yet)."""
    return samples(body).get((name, frozenset(labels.items())), 0.0)


def total(body: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (a histogram's _count
    over every stage, a counter over every tenant, ...)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples(body).items() if n == name and wanted <= ls)


def families(body: str) -> dict[str, str]:
    """Metric family name → type, as the ``# TYPE`` lines declare them."""
    return {family.name: family.type for family in text_string_to_metric_families(body)}
