"""Cross-cutting pieces every ScaleRec service uses: settings base, logging, telemetry, health."""
