"""Agents that use the models: :mod:`.planning` (the anticipatory planner) and :mod:`.arena`
(closed-loop episodes of teams of controllers)."""
