"""ScaleRec collector: Accepts events, items and erasure requests over HTTP and puts them on the bus."""
