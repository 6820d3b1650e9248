"""``uvicorn recommender_server.asgi:app --workers 2 --loop uvloop --http httptools``."""

from common.settings import Settings
from recommender_server.app import create_app
from recommender_server.config import ApiConfig

app = create_app(ApiConfig.from_settings(Settings.from_env()), asgi=True)
