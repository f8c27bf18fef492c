"""Cross-cutting pieces every ScaleRec service uses: settings base, logging, telemetry, health."""

#: The release version of the whole project: the services' OpenAPI ``info.version`` reads it, and
#: tests/unit/test_version.py holds every pyproject.toml and the charts' ``appVersion`` to it.
__version__ = "0.1.0"
