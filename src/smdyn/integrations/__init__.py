"""Adapters for training frameworks (optional extras; each imports its framework only when used).

* :mod:`smdyn.integrations.lightning` — Lightning callbacks (``pip install smdyn[lightning]``).
"""
