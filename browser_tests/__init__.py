"""Real-browser tests of the gateway and its EventSource polyfill (see conftest.py)."""
