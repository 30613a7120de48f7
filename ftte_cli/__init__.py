"""ftte: sparse, semi-asynchronous federated learning on real fleets of small devices."""

__version__ = "0.1.0"
