// otafleet dashboard: the little that needs a script. Everything works
// without it except live updates; no inline script anywhere (CSP).
"use strict";

// Times in the browser's own zone.
function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) {
      t.textContent = d.toLocaleString();
      t.title = t.getAttribute("datetime");
    }
  }
}

// Bake timers count down.
function countdowns() {
  for (const el of document.querySelectorAll("[data-countdown]")) {
    const left = Math.round((new Date(el.dataset.countdown) - Date.now()) / 1000);
    el.textContent = left > 0 ? "in " + left + " s" : "now";
  }
}

// The rollout page: re-render the live part whenever the event stream says
// the rollout moved (at most every 500 ms). EventSource reconnects by
// itself and sends Last-Event-ID, so nothing is missed.
function liveRollout(live) {
  const id = live.dataset.rollout;
  let pending = false, last = 0, seen = 0;
  const refresh = () => {
    pending = false;
    last = Date.now();
    // `seen`: the server answers with data read after that event.
    fetch("/ui/rollouts/" + id + "/live?seen=" + seen, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => {
        live.innerHTML = html;
        localTimes(live);
        countdowns();
        const st = live.querySelector("[data-state]");
        const head = document.getElementById("state");
        if (st && head) head.innerHTML = st.innerHTML;
        document.body.dataset.updated = String(Number(document.body.dataset.updated || 0) + 1);
      })
      .catch(() => {});
  };
  const schedule = (e) => {
    const n = Number(e && e.lastEventId);
    if (n > seen) seen = n;
    if (pending) return;
    pending = true;
    setTimeout(refresh, Math.max(0, 500 - (Date.now() - last)));
  };
  // Device actions come summarized (one `actions.summary` at most every
  // 500 ms), so a 100,000-device rollout is not 100,000 messages per page.
  const es = new EventSource("/api/v1/events/stream?summary=true&rollout_id=" + encodeURIComponent(id));
  es.onmessage = schedule;
  for (const kind of ["actions.summary"].concat(
    ["created", "pending", "running", "paused", "succeeded", "failed", "aborted", "rolled_back", "released",
     "gate_passed", "wave_started", "promoted", "rollback_requested", "rollbacks_created"].map((k) => "rollout." + k))) {
    es.addEventListener(kind, schedule);
  }
  es.onopen = () => { document.body.dataset.stream = "open"; };
}

// The new-rollout form: how many devices the selector matches, as you type.
function selectorCount(input, out) {
  let timer = null;
  const ask = () => {
    fetch("/ui/rollouts/count?selector=" + encodeURIComponent(input.value), { credentials: "same-origin" })
      .then((r) => r.json().then((b) => ({ ok: r.ok, b })))
      .then(({ ok, b }) => {
        out.textContent = ok ? b.count + " matching devices" : (b.error && b.error.message) || "invalid selector";
        out.className = ok ? "" : "error";
        input.setAttribute("aria-invalid", ok ? "false" : "true");
      })
      .catch(() => {});
  };
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(ask, 250); });
  ask();
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  countdowns();
  setInterval(countdowns, 1000);
  const live = document.getElementById("live");
  if (live && window.EventSource) liveRollout(live);
  const sel = document.querySelector("#new-rollout #selector");
  const out = document.getElementById("selector-count");
  if (sel && out) selectorCount(sel, out);
  // `otafleet demo` links to /ui/login#token=…: the fragment never reaches
  // the server or its logs; sign in with it at once.
  const login = document.getElementById("login");
  if (login && location.hash.startsWith("#token=")) {
    login.querySelector("#token").value = decodeURIComponent(location.hash.slice(7));
    history.replaceState(null, "", location.pathname);
    login.submit();
  }
  // Buttons that cannot be undone ask first.
  for (const b of document.querySelectorAll("button[data-command=abort], button[data-command=rollback]")) {
    b.addEventListener("click", (e) => {
      if (!window.confirm(b.textContent + " this rollout?")) e.preventDefault();
    });
  }
});
