"""``gunicorn -w 4 -k gthread recommender_server.wsgi:app`` (connections open lazily)."""

from common.settings import Settings
from recommender_server.app import create_app
from recommender_server.config import ApiConfig

app = create_app(ApiConfig.from_settings(Settings.from_env()))
