"""Code that runs next to the dask processes themselves (local processes or VMs).

It must never need, and is never given, cloud credentials.
"""
