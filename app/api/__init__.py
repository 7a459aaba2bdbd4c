"""HTTP layer: routers (one per resource), schemas, dependencies and problem-details errors."""
