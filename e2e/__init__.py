"""anchord end-to-end suite: the real image under Docker Compose (see conftest.py)."""
