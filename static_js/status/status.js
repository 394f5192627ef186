/* The gateway's status page: figures from every gateway process, read from the gateway's own
   event stream, shown as numbers and as uPlot charts of the last minutes.

   Each process publishes its figures (totals since it started, and its open connections) as a
   "figures" event on the status channel every second while someone watches. The page keeps
   each process's last two samples, turns totals into rates, and once a second adds up the
   processes heard from in the last few seconds. */
(function () {
  "use strict";

  var WINDOW = 300; // seconds shown
  var STALE = 5000; // ms: a process not heard from for this long is left out
  var TRANSPORTS = ["native", "padded", "long-poll", "jsonp"];
  var config = JSON.parse(document.getElementById("status-config").textContent);
  var processes = {};
  var series = {t: [], connections: TRANSPORTS.map(function () { return []; }),
    deliveries: [], published: [], dropped: [], resets: []};
  var charts = [];

  function $(id) {
    return document.getElementById(id);
  }

  function show(id, value) {
    $(id).textContent = String(value);
  }

  function sum(object) {
    var total = 0;
    Object.keys(object || {}).forEach(function (key) {
      total += object[key];
    });
    return total;
  }

  function rate(now, before, pick) {
    var seconds = (now.time - before.time) / 1000;
    return seconds > 0 ? Math.max(0, pick(now) - pick(before)) / seconds : 0;
  }

  function onFigures(event) {
    var figures = JSON.parse(event.data);
    var seen = processes[figures.process];
    processes[figures.process] = {now: figures, before: seen ? seen.now : null,
      heard: Date.now()};
  }

  function totals() {
    var at = Date.now();
    var out = {processes: 0, subscribers: 0, channels: 0, published: 0, deliveries: 0,
      dropped: 0, resets: 0, connected: 0, deliveryRate: 0, publishRate: 0, dropRate: 0,
      resetRate: 0, connections: {}};
    TRANSPORTS.forEach(function (name) {
      out.connections[name] = 0;
    });
    Object.keys(processes).forEach(function (id) {
      var entry = processes[id], now = entry.now, before = entry.before;
      if (at - entry.heard > STALE) {
        delete processes[id];
        return;
      }
      out.processes += 1;
      out.subscribers += now.subscribers;
      out.channels += now.channels;
      out.published += now.published;
      out.deliveries += now.deliveries;
      out.dropped += sum(now.dropped);
      out.resets += sum(now.resets);
      out.connected += now.connected ? 1 : 0;
      TRANSPORTS.forEach(function (name) {
        out.connections[name] += now.connections[name] || 0;
      });
      if (before) {
        out.deliveryRate += rate(now, before, function (f) { return f.deliveries; });
        out.publishRate += rate(now, before, function (f) { return f.published; });
        out.dropRate += rate(now, before, function (f) { return sum(f.dropped); });
        out.resetRate += rate(now, before, function (f) { return sum(f.resets); });
      }
    });
    return out;
  }

  function push(list, value) {
    list.push(value);
    if (list.length > WINDOW) {
      list.shift();
    }
  }

  function tick() {
    var figures = totals();
    show("processes", figures.processes);
    show("connected", figures.connected + " of " + figures.processes);
    show("subscribers", figures.subscribers);
    show("channels", figures.channels);
    show("published", figures.published);
    show("deliveries", figures.deliveries);
    show("dropped", figures.dropped);
    show("resets", figures.resets);
    show("publish-rate", figures.publishRate.toFixed(1));
    show("delivery-rate", figures.deliveryRate.toFixed(1));
    TRANSPORTS.forEach(function (name, index) {
      show("connections-" + name, figures.connections[name]);
      push(series.connections[index], figures.connections[name]);
    });
    push(series.t, Date.now() / 1000);
    push(series.deliveries, figures.deliveryRate);
    push(series.published, figures.publishRate);
    push(series.dropped, figures.dropRate);
    push(series.resets, figures.resetRate);
    charts[0].setData([series.t].concat(series.connections));
    charts[1].setData([series.t, series.deliveries, series.published]);
    charts[2].setData([series.t, series.dropped, series.resets]);
  }

  function chart(id, title, labels, colors) {
    var element = $(id);
    var options = {
      title: title,
      width: Math.max(320, element.clientWidth),
      height: 180,
      series: [{}].concat(labels.map(function (label, index) {
        return {label: label, stroke: colors[index], width: 2};
      })),
      axes: [{}, {size: 60}]
    };
    var data = [[]].concat(labels.map(function () { return []; }));
    charts.push(new window.uPlot(options, data, element));
  }

  chart("chart-connections", "Open connections by transport", TRANSPORTS,
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]);
  chart("chart-rates", "Events per second", ["deliveries/s", "publishes/s"],
    ["#1f77b4", "#2ca02c"]);
  chart("chart-drops", "Drops and resets per second", ["drops/s", "resets/s"],
    ["#d62728", "#9467bd"]);

  var forced = new window.URLSearchParams(window.location.search).get("transport");
  var Polyfill = window.SSEGateway && window.SSEGateway.EventSource;
  var Source = forced ? Polyfill : window.EventSource || Polyfill;
  var source = new Source(config.events, forced ? {transport: forced} : undefined);
  show("transport", forced || (Source === Polyfill ? "polyfill, chosen by itself" :
    "native EventSource"));
  source.onopen = function () {
    show("state", "live");
  };
  source.onerror = function () {
    show("state", source.readyState === 2 ? "closed" : "reconnecting");
  };
  source.addEventListener("figures", onFigures);
  window.setInterval(tick, 1000);
}());
