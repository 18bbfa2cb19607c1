"""The worker program: loads models and runs inference, in a subprocess or inside a container.

It depends on nothing of the node (only the stdlib, numpy, msgpack, Pillow and one framework), so the same code runs
in `LocalExecutor` subprocesses and in the Docker images. Start it with `python -m carml_mesh.exec.worker`.
"""
