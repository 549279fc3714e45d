"""Training: :mod:`.train` (the loop, one process or DDP, and checkpoints) and :mod:`.workflow`
(train, evaluate, gate and register one dataset version's models)."""
