"""The cloud-agnostic control plane: store of record, events and the reconciling manager."""
