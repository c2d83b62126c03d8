"""Training: ``prepare`` checks and builds a run before anything is written, ``trainer.train`` runs it
(steps, validations, checkpoints, the test at the end), ``app`` is the Hydra application around it."""
