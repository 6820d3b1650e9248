"""``uvicorn recommender_server.asgi:app --workers 2 --loop uvloop --http httptools``
(``--lifespan on``: the user change stream starts with the app)."""

from common.settings import Settings
from recommender_server.app import create_app
from recommender_server.config import ApiConfig

app = create_app(ApiConfig.from_settings(Settings.from_env()))
