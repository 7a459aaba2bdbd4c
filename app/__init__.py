"""Nominal: few-shot visual anomaly inspection.

Layers, top to bottom (imports point down only):

    app.api       HTTP: routers, schemas, dependencies, problem-details errors
    app.services  use cases: variants, images, training jobs, inspection, API keys
    app.detector  the maths: backbones, patch features, coreset, calibration, ONNX graphs
    app.db        SQLAlchemy models and sessions

``app.errors`` is the one exception hierarchy all layers share; ``app.settings`` the one
configuration object.
"""

__version__ = "0.1.0"
