"""``uvicorn faiss_server.asgi:app --workers 1`` (one worker: the index is in-process state)."""

from common.settings import Settings
from faiss_server.app import create_app
from faiss_server.config import FaissConfig

app = create_app(FaissConfig.from_settings(Settings.from_env()))
