"""Everything after training: cost (FLOPs, latency), the weight-sharing oracle, search, export."""
