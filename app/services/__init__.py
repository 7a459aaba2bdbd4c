"""Use cases, no HTTP: variants, images, training jobs, inspection, backbones, metrics.

Service functions take a SQLAlchemy ``Session`` (or the ``Database`` for work that must not
hold a transaction open, such as scoring) and raise ``app.errors`` classes only.
"""
