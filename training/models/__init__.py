"""The models: :mod:`.world_model` (joint next state, reward, termination), :mod:`.behavior_model`
(each agent's next action), :mod:`.offline_rl` (the offline-RL peer's Q-network) and
:mod:`.rollout` (the one imagined rollout evaluation, ``/imagine`` and the planner share).
:mod:`.layers` holds what the families share (transformer block, action encoding, the
architecture check); it imports none of them."""
