"""The bus's one size limit, shared by the codec and the broker (which imports nothing else of
the bus: it forwards frames without reading them)."""

# Large enough for a BackendsDesired of 100 000 entries even in its worst shape (one
# container per entry, ~0.6 MB per 10 000), small enough that a runaway sender cannot
# make every receiver allocate without bound.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
