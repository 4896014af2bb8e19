"""Everything after training: cost (FLOPs, latency), the weight-sharing oracle, search, export.

Entry points (``python -m nas.search``, ``nas.export``, ``nas.evaluate``, ``nas.latency_table``) sit at the top
with the settings, budgets and FLOP costs every command shares; the rest lives in rooms: ``latency/`` (measuring
and latency tables), ``study/`` (oracle, candidates, Optuna study, Pareto front, the search run) and ``deploy/``
(export, programs, ONNX, evaluation).
"""
