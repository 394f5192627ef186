"""The flask-sse side of the benchmark: its blueprint at /stream, nothing else.

Served by ``run.py`` as ``gunicorn -k gevent -w 1 flask_sse_app:app`` with ``REDIS_URL`` set.
"""

import os

from flask import Flask
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
app.register_blueprint(sse, url_prefix="/stream")
