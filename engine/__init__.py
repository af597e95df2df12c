"""csd-blender's engine: texture, generate and edit jobs with Classifier Score Distillation."""

__version__ = "0.1.0"
