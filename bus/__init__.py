"""The anchord event bus: typed events, their codec, the broker and the worker client."""
