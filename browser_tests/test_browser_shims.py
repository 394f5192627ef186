"""The test shims themselves (pages/xdr_shim.js, pages/legacy_xhr.js) keep the surface and limits
of what they stand in for, so that the polyfill cannot pass here by leaning on more."""

from __future__ import annotations


def test_the_xdomainrequest_shim_has_the_surface_and_limits_of_ie_xdr(shared_gateway, open_harness):
    harness = open_harness(shared_gateway.url, shims=["xdr_shim"])
    found = harness.page.evaluate("""(gateway) => {
        var xdr = new XDomainRequest(), refused = {};
        ["PUT", "DELETE", "OPTIONS"].forEach(function (method) {
            try { new XDomainRequest().open(method, gateway + "/healthz"); refused[method] = false; }
            catch (e) { refused[method] = true; }
        });
        try { new XDomainRequest().open("GET", "https://127.0.0.1:1/x"); refused.scheme = false; }
        catch (e) { refused.scheme = true; }
        xdr.open("POST", gateway + "/healthz");
        return {
            missing: ["setRequestHeader", "getResponseHeader", "readyState", "status",
                      "withCredentials", "overrideMimeType"].filter(function (name) {
                return name in xdr; }),
            present: ["open", "send", "abort", "timeout", "responseText", "contentType",
                      "onload", "onprogress", "onerror", "ontimeout"].filter(function (name) {
                return name in xdr; }).length,
            refused: refused,
        };
    }""", shared_gateway.url)
    assert found == {"missing": [], "present": 10,
                     "refused": {"PUT": True, "DELETE": True, "OPTIONS": True, "scheme": True}}


def test_the_xdomainrequest_shim_shows_no_status_and_nothing_before_2_kb(
        shared_gateway, open_harness):
    harness = open_harness(shared_gateway.url, shims=["xdr_shim"])
    # A 404: onerror with no body. A small complete answer (an empty long-poll): onload, with
    # its content type, and no progress before (under 2 KB).
    outcome = harness.page.evaluate("""(gateway) => new Promise(function (resolve) {
        var results = {}, pending = 2;
        function done() { if (--pending == 0) { resolve(results); } }
        var missing = new XDomainRequest();
        missing.onload = function () { results.missing = "load"; done(); };
        missing.onerror = function () { results.missing = "error:" + missing.responseText; done(); };
        missing.open("GET", gateway + "/no-such-page");
        missing.send();
        var small = new XDomainRequest(), progressed = false;
        small.onprogress = function () { progressed = true; };
        small.onload = function () {
            results.small = [progressed, small.contentType, small.responseText.length > 0];
            done();
        };
        small.onerror = function () { results.small = "error"; done(); };
        small.open("GET", gateway + "/poll/shim-check?timeout=0");
        small.send();
    })""", shared_gateway.url)
    assert outcome == {"missing": "error:", "small": [False, "application/json; charset=utf-8", True]}


def test_the_legacy_xhr_shim_refuses_other_origins_and_hides_cors_support(
        shared_gateway, open_harness, page_origin):
    harness = open_harness(shared_gateway.url, shims=["legacy_xhr"])
    found = harness.page.evaluate("""([gateway, own]) => new Promise(function (resolve) {
        var xhr = new XMLHttpRequest(), result = {withCredentials: "withCredentials" in xhr};
        try { xhr.open("GET", gateway + "/healthz", true); result.crossOrigin = "opened"; }
        catch (e) { result.crossOrigin = "refused"; }
        var same = new XMLHttpRequest(), early = [];
        same.onreadystatechange = function () {
            if (same.readyState < 4) {
                try { same.responseText; early.push("shown"); } catch (e) { early.push("hidden"); }
            } else {
                result.early = early.filter(function (x, i, all) { return all.indexOf(x) == i; });
                result.done = same.status == 200 && same.responseText.length > 0;
                resolve(result);
            }
        };
        same.open("GET", own + "/pages/harness.js", true);
        same.send(null);
    })""", [shared_gateway.url, page_origin.origin])
    assert found == {"withCredentials": False, "crossOrigin": "refused",
                     "early": ["hidden"], "done": True}
