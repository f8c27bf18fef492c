"""ScaleRec ranker: Answers recommendation requests: candidates, features, scoring, re-ranking, explanations."""
