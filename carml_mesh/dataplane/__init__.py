"""The data plane's types: what every protocol (/api/predict, KServe v2, the bench) turns its bodies into, and what
the one routing entry, the forwarder and the executors pass along."""
