"""A worked example of private channels: a Flask application that logs a user in, mints a
token for the user's channel `user.<id>`, and serves a page that subscribes to it with the
gateway's polyfill, across origins, through nginx.

    SSE_GATEWAY_SUBSCRIBE_KEY=... PUSH_URL=http://127.0.0.1:8000 \
    PUBLISH_URL=http://127.0.0.1:8079 python3 examples/private_channels/app.py --port 5000

PUSH_URL is the public nginx server in front of the gateway (the page loads the polyfill and
subscribes there), PUBLISH_URL nginx's server for publishers. See README.md beside this file.
"""

import argparse
import html
import os

from flask import Flask, redirect, request, session

from gateway import Publisher
from gateway.tokens import subscribe_token

app = Flask(__name__)
app.secret_key = os.urandom(32)  # the demo's own session cookie, not the gateway's key
KEY = os.environ["SSE_GATEWAY_SUBSCRIBE_KEY"]
PUSH_URL = os.environ.get("PUSH_URL", "http://127.0.0.1:8000")
PUBLISH_URL = os.environ.get("PUBLISH_URL", "http://127.0.0.1:8079")
TOKEN_TTL = float(os.environ.get("TOKEN_TTL", "300"))  # short: a query token may be seen

LOGIN = """<!DOCTYPE html><title>Log in</title>
<form method="post" action="/login">User id: <input name="user"> <button>Log in</button></form>"""

PAGE = """<!DOCTYPE html><title>Your notifications</title>
<p>Notifications for user {user}:</p><ul id="list"></ul>
<form method="post" action="/notify"><button>Send me one</button></form>
<script src="{push}/static/eventsource.js"></script>
<script>
  var source = new SSEGateway.EventSource("{push}/events/user.{user}", {{
    // Asked before connecting and whenever the token expires: the gateway then ends the
    // stream with gateway-auth-expired, and the polyfill resumes from its last event id.
    token: function (done) {{
      var xhr = new XMLHttpRequest();
      xhr.open("GET", "/token");
      xhr.onload = function () {{ done(xhr.status == 200 ? xhr.responseText : null); }};
      xhr.onerror = function () {{ done(null); }};
      xhr.send();
    }}
  }});
  source.addEventListener("notice", function (e) {{
    var item = document.createElement("li");
    item.appendChild(document.createTextNode(e.data));
    document.getElementById("list").appendChild(item);
  }});
</script>"""


@app.get("/")
def index():
    user = session.get("user")
    if user is None:
        return LOGIN
    return PAGE.format(user=user, push=html.escape(PUSH_URL))


@app.post("/login")
def login():
    user = request.form.get("user", "")
    if not user.isdigit():  # a real application checks a password here
        return LOGIN, 400
    session["user"] = user
    return redirect("/")


@app.get("/token")
def token():
    user = session.get("user")
    if user is None:
        return "log in first", 401
    return subscribe_token([f"user.{user}"], KEY, ttl=TOKEN_TTL), {"Content-Type": "text/plain",
                                                                    "Cache-Control": "no-store"}


@app.post("/notify")
def notify():
    user = session.get("user")
    if user is None:
        return "log in first", 401
    Publisher(PUBLISH_URL).publish(f"user.{user}", "You have a notification", event="notice")
    return redirect("/")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000)
    app.run("127.0.0.1", parser.parse_args().port, threaded=True)
