"""``uvicorn recommender_server.asgi:app --workers 2 --loop uvloop --http httptools``
(``--lifespan on``: the user change stream starts with the app).

Configured only by the environment, exactly as ``python -m scripts.serve api`` is
(:meth:`ApiConfig.from_env`: ``RECSYS_*`` and ``RECSYS_API_*``).
"""

from recommender_server.app import create_app
from recommender_server.config import ApiConfig

app = create_app(ApiConfig.from_env())
