"""Latency: measuring a network's forward pass on a device (``measure``), and latency tables that predict it
elsewhere (``entries`` what a table holds, ``timers`` how an entry is timed, ``build`` building one, ``table``
loading one and predicting from it)."""
