"""capflow: unlabeled audio -> captioned datasets -> text-to-audio and audio-editing models."""

__version__ = "0.1.0"
