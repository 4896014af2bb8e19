"""After the search: export of a chosen sub-network (``export``: subnet.json, weights, the torch.export program,
ONNX), where it comes from (``sources``), reading it back (``program``) and evaluating it (``evaluation``)."""
