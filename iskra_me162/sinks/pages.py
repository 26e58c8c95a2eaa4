"""The pages the HTTP endpoint renders at each request, beside its JSON resources (issue 13):
each a :data:`~iskra_me162.sinks.http.PageRenderer` from the latest values and the daemon's
:class:`~iskra_me162.health.Health`."""

from __future__ import annotations

import logging

from iskra_me162.sinks import status_page
from iskra_me162.sinks.http import PageRenderer

log = logging.getLogger(__name__)


def http_pages() -> dict[str, PageRenderer]:
    """Path -> renderer, for :class:`~iskra_me162.sinks.http.HttpEndpoint`."""
    pages: dict[str, PageRenderer] = {"/": status_page.render}
    try:
        from iskra_me162.sinks import metrics
    except ImportError as error:  # prometheus_client is optional
        log.info(
            "no /metrics: %s (install python3-prometheus-client, or pip install "
            "prometheus-client, for Prometheus metrics)",
            error,
        )
    else:
        pages["/metrics"] = metrics.render
    return pages
