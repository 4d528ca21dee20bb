"""introspect: two-stage introspective learning and gradient-based inference."""

__version__ = "0.1.0"
