"""The cloud-agnostic control plane: store of record, events and the reconciling manager.

Front doors reach it through :func:`coiled_lab.connect.get_control`; nothing here
imports a front door (``tests/test_layers.py`` walks the imports).
"""
