"""Reading Prometheus exposition text in tests: the names a scrape offers
(with the suffixes each metric type gives its samples) and its samples."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gauge": ("",),
    "untyped": ("",),
    "unknown": ("",),
}


def exported_names(text: str) -> set[str]:
    """Every series name a PromQL query may use against this exposition.

    A family is declared by its ``# TYPE`` line even while it has no sample
    (a labelled counter before its first event), so the names come from the
    declared families and their type's suffixes, plus every sample seen.
    """
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.update(fam.name + s for s in SUFFIXES[fam.type])
        names.update(s.name for s in fam.samples)
    return names


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of series ``name`` (full sample name, e.g. with ``_total``)."""
    return [
        (dict(s.labels), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    ]


async def http_get(host: str, port: int, path: str = "/metrics") -> tuple[int, str]:
    """One HTTP/1.0 GET: (status code, body)."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()
