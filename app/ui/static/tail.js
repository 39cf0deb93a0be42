// The event list's live tail: server-sent events from /ui/tail, rows rendered (and escaped) by the
// server with the list's own row template, inserted newest on top. The state is always shown:
// connecting, live, reconnecting, busy, paused, trouble. A row already on the page (a reconnect
// resends the rows of an unfinished delta) is not inserted twice; the page keeps MAX_ROWS rows.
"use strict";

(() => {
  const MAX_ROWS = 1000;
  const STALL_MS = 45000; // three missed heartbeats
  const tail = document.getElementById("tail");
  const table = document.getElementById("events");
  if (!tail || !table || !window.EventSource) return;
  const state = document.getElementById("tail-state");
  const toggle = document.getElementById("tail-toggle");
  const body = table.tBodies[0];
  const baseUrl = new URL(tail.dataset.tailUrl, window.location.href);
  let source = null;
  let lastMark = baseUrl.searchParams.get("mark");
  let stallTimer = null;

  function show(name, text) {
    state.dataset.state = name;
    state.textContent = text;
  }

  function newestShown() {
    let newest = null;
    for (const time of body.querySelectorAll("td.when time[datetime]")) {
      const moment = new Date(time.dateTime);
      if (!newest || moment > newest) newest = moment;
    }
    return newest;
  }

  function insert(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    const newest = newestShown();
    let added = 0;
    for (const row of Array.from(template.content.querySelectorAll("tr"))) {
      if (document.getElementById(row.id)) continue;
      const time = row.querySelector("time[datetime]");
      row.classList.add("arrived");
      if (newest && time && new Date(time.dateTime) < newest) {
        row.classList.add("late");
        row.title = "committed after newer events: arrived late";
      }
      window.datastorageViewer.localizeTimes(row);
      body.prepend(row);
      added += 1;
    }
    while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
    const empty = document.getElementById("empty");
    if (empty && added) empty.hidden = true;
  }

  function watchStall() {
    clearTimeout(stallTimer);
    stallTimer = setTimeout(() => { show("reconnecting", "no heartbeat; reconnecting"); restart(); }, STALL_MS);
  }

  function connect() {
    const url = new URL(baseUrl);
    if (lastMark) url.searchParams.set("mark", lastMark);
    show("connecting", "connecting…");
    source = new EventSource(url);
    const remember = (event) => { if (event.lastEventId) lastMark = event.lastEventId; watchStall(); };
    source.addEventListener("ready", (event) => { remember(event); show("live", "live"); });
    source.addEventListener("heartbeat", (event) => { remember(event); if (state.dataset.state !== "live") show("live", "live"); });
    source.addEventListener("events", (event) => { remember(event); show("live", "live"); insert(event.data); });
    source.addEventListener("busy", (event) => show("busy", `busy: ${event.data}`));
    source.addEventListener("trouble", (event) => show("trouble", event.data));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        show("closed", "disconnected; retrying");
        setTimeout(restart, 5000);
      } else if (state.dataset.state !== "busy") {
        show("reconnecting", "reconnecting…");
      }
    });
    watchStall();
  }

  function stop() {
    clearTimeout(stallTimer);
    if (source) source.close();
    source = null;
  }

  function restart() {
    stop();
    if (toggle.dataset.paused !== "true") connect();
  }

  toggle.hidden = false;
  toggle.addEventListener("click", () => {
    const pausing = toggle.dataset.paused !== "true";
    toggle.dataset.paused = String(pausing);
    toggle.textContent = pausing ? "Resume" : "Pause";
    if (pausing) { stop(); show("paused", "paused"); } else { connect(); }
  });
  window.addEventListener("pagehide", stop);
  connect();
})();
