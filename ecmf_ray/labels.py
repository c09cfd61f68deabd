"""The six MER2025 emotion classes and their fixed order (the index used by every model and file), and
the label of a clip left out of training."""

EMOTIONS: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise")
EMOTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}
NUM_CLASSES = len(EMOTIONS)

EXCLUDED = "unusable"
"""The label a label table gives a clip left out of training: neither trained nor validated on (a person
found it unusable in ``ecmf review``)."""
LABEL_CHOICES: tuple[str, ...] = (*EMOTIONS, EXCLUDED)
