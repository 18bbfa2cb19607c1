"""carml-mesh: CarML rebuilt as an asyncio peer-to-peer mesh.

Kept import-light on purpose: the worker program (carml_mesh.exec.worker) runs inside containers that hold only
numpy, msgpack, Pillow and one framework.
"""

__version__ = "0.1.0"
