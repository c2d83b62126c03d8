"""Scoring a model on a split: prediction over whole inputs, per-case metrics, evaluation loops.

Below ``train`` (which evaluates during training) and ``analysis`` (which re-scores saved runs):
nothing here imports either, so a metric can be read, tested and reused without the trainer.
"""
