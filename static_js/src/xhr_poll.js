/* Transport: long-polling over XMLHttpRequest, for IE8/9 on the gateway's own origin, where
   responseText cannot be read before the response is complete. A long-poll is no event stream:
   a 5xx is retried like a network error, not taken as final. */

function xhrPoll(es) {
  /* A unique parameter: IE would otherwise answer a repeated poll from its cache. */
  return xhrRequest(es, es._pollUrl(["_", uid()]), null, function (status, xhr) {
    /* A refusal of private channels (401, 403) has a JSON body too. */
    if (status == 200 || status == 401 || status == 403) {
      es._poll(xhr.responseText);
    } else {
      es._end(status > 499 ? 0 : status);
    }
  });
}
