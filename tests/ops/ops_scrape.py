"""Reading /metrics the way Prometheus does: over a real socket, parsed by prometheus_client."""
from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape of ``url``/metrics."""
    r = httpx.get(f"{url}/metrics", timeout=10)
    r.raise_for_status()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def families(url: str) -> set[str]:
    """The metric family names /metrics exposes (as written in queries: with ``_total``,
    ``_bucket``, ``_sum``, ``_count`` where the family has those samples)."""
    r = httpx.get(f"{url}/metrics", timeout=10)
    r.raise_for_status()
    names: set[str] = set()
    for family in text_string_to_metric_families(r.text):
        names.add(family.name)
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "summary": ("_sum", "_count", "_created"), "gauge": ()}.get(family.type, ())
        names.update(family.name + sfx for sfx in suffixes)
    return names


def value(sample: dict, name: str, **labels: str) -> float:
    return sample.get((name, tuple(sorted(labels.items()))), 0.0)
