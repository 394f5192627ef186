/* Event-stream parser: the WHATWG HTML "interpret an event stream" algorithm, fed text in chunks.
   https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation */

/* onEvent(type, data, lastEventId) is called for each event; onRetry(ms) for each valid retry field.
   The text comes decoded by the browser's UTF-8 decoder, which has already removed the one leading
   byte order mark that the spec ignores: a second one is part of the first field's name. */
function Parser(onEvent, onRetry) {
  this.onEvent = onEvent;
  this.onRetry = onRetry;
  this.id = "";
  this.reset();
}

Parser.prototype = {
  /* A new response is a new stream: an unfinished event of the last one is discarded. The event
     source's last event ID string (this.id) lives on; like browsers, the new stream's last event
     ID buffer starts from it. */
  reset: function () {
    var me = this;
    me.buf = me.data = me.type = "";
    me.idBuf = me.id;
    me.cr = me.rotate = false;
  },

  feed: function (text) {
    var me = this, lineEnd = /\r\n?|\n/g, pos = 0, m, buf;
    if (!text) {
      return;
    }
    /* The last chunk ended with a CR: a LF starting this one is the second half of that CRLF. */
    if (me.cr && text.charAt(0) == "\n") {
      text = text.slice(1);
    }
    buf = me.buf + text;
    while ((m = lineEnd.exec(buf))) {
      me.line(buf.slice(pos, m.index));
      pos = lineEnd.lastIndex;
    }
    me.cr = pos == buf.length && buf.charAt(pos - 1) == "\r";
    me.buf = buf.slice(pos);
  },

  line: function (line) {
    var me = this, colon, field, value;
    if (!line) {
      /* Dispatch: the last event ID is set even when no event follows. */
      me.id = me.idBuf;
      if (me.data) {
        /* The data buffer always ends with the LF that the last data line added: drop it. */
        me.onEvent(me.type || "message", me.data.slice(0, -1), me.id);
      }
      me.data = me.type = "";
      return;
    }
    /* Our gateway ends a rotated response with this comment and a blank line. */
    me.rotate = line == ": rotate";
    colon = line.search(/:/);
    if (colon == 0) {
      return;
    }
    field = colon < 0 ? line : line.slice(0, colon);
    /* One space after the colon is not part of the value. */
    value = colon < 0 ? "" : line.slice(line.charAt(colon + 1) == " " ? colon + 2 : colon + 1);
    if (field == "data") {
      me.data += value + "\n";
    } else if (field == "event") {
      me.type = value;
    } else if (field == "id") {
      if (value.search(/\u0000/) < 0) {
        me.idBuf = value;
      }
    } else if (field == "retry" && /^\d+$/.test(value)) {
      me.onRetry(+value);
    }
  }
};
