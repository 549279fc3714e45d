"""Training: :mod:`.config` (``TrainConfig`` and ``OfflineRLTrainConfig``, the one declaration
of each family's training options),
:mod:`.options` (a config dataclass's fields, for the CLI and Dagster), :mod:`.train` (the
loop for every family of ``training.families``, one process or DDP, and checkpoints),
:mod:`.workflow` (train, evaluate, gate and register one dataset version's models), and the
offline-RL peer's own loop (:mod:`.offline_rl`, :mod:`.offline_rl_workflow`)."""
