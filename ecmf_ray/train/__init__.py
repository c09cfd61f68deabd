"""K-fold training: data (features + folds), one fold's loop, outputs, and the Ray job (distributed)."""
