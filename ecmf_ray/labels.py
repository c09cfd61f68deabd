"""The six MER2025 emotion classes and their fixed order (the index used by every model and file)."""

EMOTIONS: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise")
EMOTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}
NUM_CLASSES = len(EMOTIONS)
