"""ScaleRec preprocessor: Cleans and dedupes events, keeps features and histories in the store, emits point-in-time training examples."""
