"""Adapters for training frameworks (optional extras; each imports its framework only when used).

* :mod:`smdyn.integrations.lightning` — ``SphericalMonitorCallback`` and ``RescalerCallback`` for Lightning
  (``pip install smdyn[lightning]``).
* :mod:`smdyn.integrations.huggingface` — ``SphericalMonitorCallback`` for the Hugging Face ``Trainer``
  (``pip install smdyn[huggingface]``).
"""
