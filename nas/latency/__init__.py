"""Latency: the runtimes a network is deployed on (``runtimes``: eager, compiled, CUDA graph, onnxruntime,
TensorRT; ``programs``: a network made ready to run on one), measuring it there (``measure``), how a command
times its candidates (``plan``), and latency tables that predict it elsewhere (``entries`` what a table holds,
``timers`` how an entry is timed, ``build`` building one, ``table`` loading one and predicting from it)."""
