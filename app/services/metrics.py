"""Prometheus metrics of one service instance, on its own registry.

A registry per app (not the process-global one) keeps test apps independent and lets several
apps live in one process. Labels are route templates and variant names, never raw URLs, so
cardinality is bounded by the API's shape and the number of variants.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0)
TRAINING_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("nominal_http_requests", "HTTP requests by route template",
                                ["method", "route", "status"], registry=r)
        self.request_latency = Histogram("nominal_http_request_duration_seconds",
                                         "HTTP request latency by route template",
                                         ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.inspect_latency = Histogram("nominal_inspect_duration_seconds",
                                         "decode + score time of one inspected image",
                                         ["variant"], buckets=LATENCY_BUCKETS, registry=r)
        self.inspect_score = Histogram("nominal_inspect_normalized_score",
                                       "normalised anomaly scores (0.5 = threshold)",
                                       ["variant"], buckets=SCORE_BUCKETS, registry=r)
        self.inspections = Counter("nominal_inspections", "images inspected", ["variant"],
                                   registry=r)
        self.anomalies = Counter("nominal_anomalies", "images judged anomalous", ["variant"],
                                 registry=r)
        self.training_duration = Histogram("nominal_training_duration_seconds",
                                           "wall time of training jobs by outcome", ["outcome"],
                                           buckets=TRAINING_BUCKETS, registry=r)
        self.training_jobs = Counter("nominal_training_jobs", "finished training jobs by outcome",
                                     ["outcome"], registry=r)
        self.model_cache_size = Gauge("nominal_model_cache_entries", "loaded ONNX sessions",
                                      registry=r)
        self.model_cache_loads = Counter("nominal_model_cache_loads",
                                         "ONNX sessions loaded from the database", registry=r)
        self.model_split_fallbacks = Counter(
            "nominal_model_split_fallbacks",
            "models loaded whose score-only subgraph could not be built (each such model builds "
            "its anomaly map on every call; the log names the reason)", registry=r)
        self.active_version = Gauge("nominal_active_model_version",
                                    "version of the active model per variant", ["variant"],
                                    registry=r)

    def set_active_versions(self, versions: dict[str, int]) -> None:
        """Replace the per-variant gauge (deleted variants disappear from the export)."""
        self.active_version.clear()
        for name, version in versions.items():
            self.active_version.labels(variant=name).set(version)

    def render(self) -> bytes:
        return generate_latest(self.registry)
