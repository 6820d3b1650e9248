"""``uvicorn faiss_server.asgi:app --workers 1`` (one worker: the index is in-process state).

Configured only by the environment, exactly as ``python -m scripts.serve faiss`` is
(:meth:`FaissConfig.from_env`: ``RECSYS_*``, ``RECSYS_FAISS_*``, ``RECSYS_FAISS_INDEX_*``);
the OpenMP set-up is the app's own start-up (run uvicorn with the lifespan on, its
default). The keep-alive is uvicorn's: pass ``--timeout-keep-alive`` equal to
``RECSYS_FAISS_KEEP_ALIVE_S`` (5 s, uvicorn's default too).
"""

from faiss_server.app import create_app
from faiss_server.config import FaissConfig

app = create_app(FaissConfig.from_env())
