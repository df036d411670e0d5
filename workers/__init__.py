"""The worker processes supervisord runs; each module owns one concern and never imports another."""
