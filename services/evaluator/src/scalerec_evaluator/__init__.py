"""ScaleRec evaluator: Measures every model version offline, promotes only better ones, reports."""
