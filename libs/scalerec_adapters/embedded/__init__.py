"""Embedded backends: real engines that need no server (SQLite, in-process memory, onnxruntime)."""
