"""The search: the weight-sharing kNN oracle, candidates and their costs, the Optuna study (storages, samplers,
identity, trials), the Pareto front and its output files, and one search run start to end (``run``)."""
