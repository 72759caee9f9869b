"""Notebook widgets (ipywidgets 8 standard controls): the live cluster widget and the
new-cluster form. Both talk to the control plane like every other front door."""

from .cluster import ClusterWidget
from .form import ClusterForm

__all__ = ["ClusterForm", "ClusterWidget"]
