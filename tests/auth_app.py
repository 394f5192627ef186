"""An application behind `--auth-url`, run as its own process by tests/test_auth_callback.py:
`python auth_app.py PORT`. Flask on werkzeug's threaded server.

POST /authorize decides by the `session` cookie (else the query token the gateway forwards in
the body, else a bearer token):
  alice   -> 200, channels user.alice (narrowed to it), no ttl
  all     -> 200, empty body: every channel asked
  short   -> 200, {"ttl": 1}
  bob     -> 403;  nobody / anything else -> 401
  broken  -> 200 with a body that is not JSON;  down -> 503
  held    -> answers 200 only once POST /release is called
GET /questions returns every question received (body and forwarded headers).
"""

import sys
import threading

from flask import Flask, jsonify, request
from werkzeug.serving import make_server

app = Flask(__name__)
questions = []
lock = threading.Lock()
released = threading.Event()


@app.post("/authorize")
def authorize():
    body = request.get_json(force=True)
    with lock:
        questions.append({"body": body, "cookie": request.headers.get("Cookie"),
                          "authorization": request.headers.get("Authorization")})
    bearer = request.headers.get("Authorization", "")
    who = (request.cookies.get("session") or body.get("token")
           or (bearer[len("Bearer "):] if bearer.startswith("Bearer ") else None))
    if who == "alice":
        return jsonify(channels=["user.alice"])
    if who == "all":
        return "", 200
    if who == "short":
        return jsonify(ttl=1)
    if who == "bob":
        return jsonify(error="no"), 403
    if who == "broken":
        return "<html>oops</html>", 200
    if who == "down":
        return "", 503
    if who == "held":
        released.wait(30)
        return "", 200
    return "", 401


@app.get("/questions")
def list_questions():
    with lock:
        return jsonify(questions)


@app.post("/release")
def release():
    released.set()
    return "", 204


if __name__ == "__main__":
    make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True).serve_forever()
