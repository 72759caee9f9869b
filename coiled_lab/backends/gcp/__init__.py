"""The GCP backend: Compute Engine VMs in your own project, workers launched by one bulk request.

Modules, each named for what it holds: ``session`` (credentials, REST clients, retries,
calls off the event loop), ``labels``, ``network`` (the VPC, subnetwork and firewall rules
a cluster uses), ``setup`` (``coiled-lab setup gcp``), ``catalog`` (machine types per zone,
the choice of types, boot images), ``startup`` (what a VM runs at boot), ``instances``
(launching and deleting), ``logs`` (Cloud Logging and serial-port output), ``envstore``
(the Cloud Storage bucket of built environments), ``sweep``
(removal by label) and ``backend`` (the :class:`~coiled_lab.backends.base.Backend`). The
google packages are imported only when a call is made.
"""

from .backend import GCPBackend

__all__ = ["GCPBackend"]
