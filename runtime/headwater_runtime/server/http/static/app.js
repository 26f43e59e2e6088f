// Headwater web UI: one page, routed in the browser, reading the JSON API
// (docs/http-api.md) and following server-sent events. No framework; dagre lays out
// the DAG. Nothing is fetched from anywhere but this server.
"use strict";

const STATES = ["SUCCESS", "CACHED", "RUNNING", "RETRYING", "SCHEDULED", "PENDING", "FAILED",
  "TIMED_OUT", "TRIGGER_FAILED", "CANCELLED", "SKIPPED", "MAPPED"];
const TERMINAL = new Set(["SUCCESS", "FAILED", "CANCELLED"]);
const RETRYABLE = new Set(["FAILED", "CANCELLED"]);  // OperationsService/RetryFlowRun's rule
const BAD = new Set(["FAILED", "TIMED_OUT", "TRIGGER_FAILED", "CANCELLED"]);
const GROUP_MIN = 10;       // identical sibling tasks drawn as one box from this many on
const DAGRE_MAX = 400;      // boxes laid out by dagre; more get a plain layered layout
const SIDE_PAGE = 200;     // task runs the side panel lists at a time ("Show 200 more")
const BIG_RUN = 1000;       // from this many task runs, the side panel lists only those
const TASKS_MAX = 1000;     // the most one read of a run's task runs returns
const LOGS_KEPT = 5000;     // log records the page holds (the newest)
const NOTABLE = "FAILED,TIMED_OUT,TRIGGER_FAILED,CANCELLED,RUNNING,RETRYING,SCHEDULED";
const main = () => document.getElementById("main");
// The current page: what it must close when leaving it, and whether it is still the
// one shown (a load it started that ends after it was left must draw nothing).
let page = { cleanup: [], live: true };
// Who is looking, and the CSRF token every POST sends back (the server put them in the
// page: <meta name="headwater-session">).
const SESSION = (() => {
  const meta = document.querySelector('meta[name="headwater-session"]');
  const d = meta ? meta.dataset : {};
  return { csrf: d.csrf || "", name: d.name || "", role: d.role || "viewer", auth: d.auth === "true" };
})();
// Operators and admins may change things; viewers see no buttons that would be refused.
const CAN_OPERATE = SESSION.role === "operator" || SESSION.role === "admin";

// ------------------------------------------------------------------ helpers

// Unicode's bidirectional controls (U+202A-U+202E, U+2066-U+2069; headwater.wire's
// BIDI_CONTROLS): one reorders what is shown after it ("\u202egnp.exe" showed
// "exe.png"). Shown as the escapes the CLI prints instead.
const BIDI = /[\u202a-\u202e\u2066-\u2069]/g;
function printable(value) {
  return String(value ?? "").replace(BIDI, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}
// Text from outside (names, messages, logs, previews) for HTML: every user text goes
// through here.
function esc(value) {
  return printable(value).replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function setTitle(what) { document.title = what ? `${printable(what)} · Headwater` : "Headwater"; }
function color(state) {
  return getComputedStyle(document.documentElement).getPropertyValue("--" + state).trim() || "#999";
}
function badge(state) { return `<span class="st st-${esc(state)}">${esc(state)}</span>`; }
// Times in the browser's time zone, named ("14:03:07 CET"): a bare local time was read
// as the server's or UTC.
function fmtTime(t) { return t ? new Date(t * 1000).toLocaleString(undefined, { timeZoneName: "short" }) : ""; }
function fmtClock(t) { return t ? new Date(t * 1000).toLocaleTimeString(undefined, { timeZoneName: "short" }) : ""; }
// A time for HTML: <time datetime=ISO> with the full date and zone in its title (a
// log's or an attempt's clock time alone does not say which day it was).
function timeHtml(t, clock = false) {
  if (!t) return "";
  const d = new Date(t * 1000);
  const full = d.toLocaleString(undefined, { dateStyle: "full", timeStyle: "long" });
  return `<time datetime="${d.toISOString()}" title="${esc(full)}">${esc(clock ? fmtClock(t) : fmtTime(t))}</time>`;
}
function fmtDur(s) {
  if (s === null || s === undefined) return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60), r = Math.round(s % 60);
  if (m < 60) return `${m}m ${r}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}
function ago(t) {
  if (!t) return "";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 60 ? `${Math.round(s)}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago`
    : `${Math.round(s / 3600)}h ago`;
}
function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}
function runDuration(r) {
  if (r.duration !== null && r.duration !== undefined) return r.duration;
  return r.started_at && !TERMINAL.has(r.state) ? Date.now() / 1000 - r.started_at : null;
}
// Calls fn once, ms after the first of a burst of asks; never once its page is left
// (a load of the old page's filter drew into the next page's table).
function debounce(fn, ms) {
  let timer = null;
  const owner = page;
  owner.cleanup.push(() => { clearTimeout(timer); timer = null; });
  return () => {
    if (!timer && owner.live) timer = setTimeout(() => { timer = null; if (owner.live) fn(); }, ms);
  };
}
// Calls the async fn when asked, one call at a time, and the next no sooner than
// `least` ms after the last ended, or four times as long as it took if that is longer:
// a page following a busy run reloads what it shows at a pace the server can afford
// (reloading a 10,000-task run's page on every change kept the server busy and the
// run 20 times slower).
function paced(fn, least) {
  let busy = false, again = false, timer = null, next = 0;
  const owner = page;
  owner.cleanup.push(() => { clearTimeout(timer); timer = null; });
  const ask = () => {
    if (!owner.live) return;
    if (busy) { again = true; return; }
    if (!timer) timer = setTimeout(run, Math.max(0, next - Date.now()));
  };
  const run = async () => {
    timer = null; busy = true;
    const started = Date.now();
    try { await fn(); } catch (err) { console.warn(err); }
    busy = false;
    next = Date.now() + Math.max(least, 4 * (Date.now() - started));
    if (again) { again = false; ask(); }
  };
  return ask;
}

class ApiError extends Error {
  constructor(message, status = 0) { super(message); this.status = status; }
}

// ------------------------------------------------------------ keyboard focus

// Live pages redraw parts of themselves; a redraw must not take the keyboard's place
// (WCAG 2.4.3): a focused link, button, row or field is found again in what was drawn,
// by what identifies it (its id, or its own attributes inside the row of a run, task
// run, worker, schedule, flow or audit entry), and focused again, a field with its
// selection.
const ROW_ATTRS = ["data-run", "data-key", "data-worker", "data-schedule", "data-node", "data-flow", "data-object"];
const OWN_ATTRS = ["name", "href", "data-action", "data-key", "data-node", "data-child", "data-run"];
function focusKey(root) {
  const at = document.activeElement;
  if (!at || at === document.body || !root || !root.contains(at)) return null;
  const key = { at, selectors: [], selection: null };
  if (typeof at.selectionStart === "number") {
    try { key.selection = [at.selectionStart, at.selectionEnd, at.selectionDirection]; } catch { /* (a select) */ }
  }
  if (at.id) { key.selectors.push("#" + CSS.escape(at.id)); return key; }
  const tag = at.tagName.toLowerCase();
  const own = OWN_ATTRS.filter((a) => at.hasAttribute(a))
    .map((a) => `[${a}="${CSS.escape(at.getAttribute(a))}"]`).join("");
  const row = at.parentElement && at.parentElement.closest(ROW_ATTRS.map((a) => `[${a}]`).join(","));
  let scope = "";
  if (row && root.contains(row)) {
    const a = ROW_ATTRS.find((n) => row.hasAttribute(n));
    scope = `[${a}="${CSS.escape(row.getAttribute(a))}"] `;
  }
  if (own) key.selectors.push(scope + tag + own);
  if (scope) key.selectors.push(scope + tag);  // (a Pause button that is now Resume)
  return key;
}
function restoreFocus(root, key) {
  if (!key || !root) return;
  if (document.contains(key.at) && document.activeElement === key.at) return;
  for (const selector of key.selectors) {
    const again = root.querySelector(selector);
    if (!again) continue;
    again.focus({ preventScroll: true });
    if (key.selection && typeof again.setSelectionRange === "function") {
      try { again.setSelectionRange(...key.selection); } catch { /* (not a text field) */ }
    }
    return;
  }
}
// Runs draw(), which replaces what root holds, keeping the focus in it.
function keepFocus(root, draw) {
  const key = focusKey(root);
  const result = draw();
  restoreFocus(root, key);
  return result;
}
// Sets an element's HTML only when it changed (a live page rewrote the same links
// every second, and a focused one lost the focus), keeping the focus.
function setHtml(el, html) {
  if (el.hwHtml === html) return;
  el.hwHtml = html;
  keepFocus(el, () => { el.innerHTML = html; });
}
// Said to screen readers, politely (the page's live region, #announce): a run's new
// state, not each count.
function announce(message) {
  const region = document.getElementById("announce");
  if (region && region.textContent !== message) region.textContent = message;
}

function toLogin() {
  location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
}

async function api(path, options = {}, renewed = false) {
  const init = { credentials: "same-origin", headers: {} };
  if (options.method === "POST") {
    init.method = "POST";
    init.headers["X-CSRF-Token"] = SESSION.csrf;
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body || {});
  }
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) { toLogin(); throw new ApiError(body.error || "log in"); }
  // A server restarted since the page was loaded signs with a new secret: take its
  // token for this session (the cookie still says who we are) and send it once more.
  if (response.status === 403 && init.method === "POST" && !renewed &&
      String(body.error || "").startsWith("CSRF check failed: a POST needs")) {
    const session = await api("/api/session");
    if (session.csrf_token) {
      SESSION.csrf = session.csrf_token;
      const form = document.getElementById("user");
      if (form && form.csrf_token) form.csrf_token.value = session.csrf_token;
      return api(path, options, true);
    }
  }
  if (!response.ok) throw new ApiError(body.error || `${response.status} ${response.statusText}`, response.status);
  return body;
}

// Server-sent events: the EventSource is closed when the page changes.
function follow(path, handlers) {
  const source = new EventSource(path);
  const live = document.getElementById("live");
  source.onopen = () => { live.className = "on"; live.textContent = "live"; };
  source.onerror = () => { live.className = ""; live.textContent = "reconnecting…"; };
  for (const [name, fn] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
  }
  source.addEventListener("end", () => {
    source.close();
    live.className = ""; live.textContent = "ended";
  });
  page.cleanup.push(() => source.close());
  return source;
}
function every(ms, fn) { const id = setInterval(fn, ms); page.cleanup.push(() => clearInterval(id)); }

// ------------------------------------------------------------------- router

function navigate(url, replace = false) {
  if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  route();
}
document.addEventListener("click", (e) => {
  const a = e.target.closest("a");
  // (a link's own handler may have done what it does: "all task runs", "back")
  if (!a || a.target || e.defaultPrevented || e.ctrlKey || e.metaKey || e.shiftKey) return;
  if (a.classList.contains("skip")) {  // "Skip to content": the focus to the page's content
    e.preventDefault();
    main().focus();
    return;
  }
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/api/")) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", route);

let routed = "";  // the path of the page shown (a filter's change keeps it)
let tries = 0;  // loads of the page that failed in a row (the server unreachable)
function route() {
  for (const fn of page.cleanup) fn();
  page.live = false;
  page = { cleanup: [], live: true };
  const live = document.getElementById("live");
  live.textContent = ""; live.className = "";
  // The same page again (a filter chosen, Back to the previous filter): the control
  // that had the focus has it again once the page is drawn (a select's ArrowDown
  // chose the next option, and the next ArrowDown did nothing: the focus was gone).
  const focus = location.pathname === routed ? focusKey(main()) : null;
  routed = location.pathname;
  const path = location.pathname.replace(/\/+$/, "") || "/runs";
  const section = path.split("/")[1];
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.dataset.section === section);
  }
  let parts;
  try {
    parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {  // a malformed percent-encoding (URIError): say so rather than load forever
    setTitle("Bad address");
    main().innerHTML = `<h1>Bad address</h1><p class="error">The address ${esc(location.pathname)} is not valid: it has a
      malformed percent-encoding (a % not followed by the bytes of a character).</p>
      <p><a href="/runs">Go to the runs</a></p>`;
    return;
  }
  setTitle(TITLES[parts[0] || "runs"] || "");
  let render;
  if (parts[0] === "runs" && parts[1]) render = () => runPage(parts[1]);
  else if (parts[0] === "flows" && parts[1]) render = () => flowPage(parts[1]);
  else if (parts[0] === "flows") render = flowsPage;
  else if (parts[0] === "schedules") render = schedulesPage;
  else if (parts[0] === "workers") render = workersPage;
  else if (parts[0] === "audit") render = auditPage;
  else render = runsPage;
  const mine = page;
  return render().then(() => { tries = 0; if (mine.live) restoreFocus(main(), focus); }, (err) => {
    if (!mine.live) return;
    // The server could not be reached (restarting) or could not answer now (5xx): the
    // page is loaded again, after 1, 2, 4 ... at most 30 s (it stayed "Failed to fetch"
    // while the live streams of a loaded page reconnected by themselves).
    if (!(err instanceof ApiError) || err.status >= 500) {
      const delay = Math.min(30, 2 ** tries++);
      const timer = setTimeout(() => { if (mine.live) route(); }, delay * 1000);
      mine.cleanup.push(() => clearTimeout(timer));
      main().innerHTML = `<h1>Cannot load this page</h1><p class="error" role="alert">${esc(err.message)}:
        trying again in ${delay} s.</p><p><button id="try-now">Try now</button></p>`;
      document.getElementById("try-now").onclick = () => route();
      return;
    }
    tries = 0;
    if (err instanceof ApiError && err.status === 404) {  // an unknown run or flow
      setTitle("Not found");
      main().innerHTML = `<h1>Not found</h1><p class="error">${esc(err.message)}</p>
        <p><a href="/runs">Go to the runs</a></p>`;
      return;
    }
    main().innerHTML = `<h1>Something went wrong</h1><p class="error">${esc(err.message)}</p>`;
  });
}

// The title of each section's page (a run's or a flow's page sets its own once read).
const TITLES = { runs: "Runs", flows: "Flows", schedules: "Schedules", workers: "Workers",
  audit: "Audit log" };

// A failed button press: said next to the button, not in a dialog.
function failed(where, err) {
  let note = where.parentElement.querySelector(".action-error");
  if (!note) {
    note = document.createElement("span");
    note.className = "error action-error";
    note.setAttribute("role", "alert");  // (said at once by a screen reader)
    where.after(note);
  }
  note.textContent = " " + printable(err.message);
}

// --------------------------------------------------------------------- runs

const RUNS_PAGE = 50;  // runs the list shows at first, and loads on each "Load more"
const RUNS_MAX = 1000;  // the most one read of /api/runs returns

async function runsPage() {
  const mine = page;
  const q = new URLSearchParams(location.search);
  const flows = (await api("/api/flows")).flows;
  if (!mine.live) return;
  const since = q.get("since") || "";
  main().innerHTML = `<h1>Flow runs</h1>
    <form class="filters" id="filters">
      <label>Flow<select name="flow"><option value="">any</option>${flows.map((f) =>
        // (a value of its own: an option's text loses repeated spaces)
        `<option value="${esc(f.name)}" ${f.name === q.get("flow") ? "selected" : ""}>${esc(f.name)}</option>`).join("")}
      </select></label>
      <label>State<select name="state"><option value="">any</option>${
        ["RUNNING", "SUCCESS", "FAILED", "CANCELLED"].map((s) =>
          `<option ${s === q.get("state") ? "selected" : ""}>${s}</option>`).join("")}</select></label>
      <label>Created<select name="since"><option value="">any time</option>${
        [["3600", "last hour"], ["86400", "last day"], ["604800", "last week"]].map(([v, l]) =>
          `<option value="${v}" ${v === since ? "selected" : ""}>${l}</option>`).join("")}</select></label>
      <label>Schedule<input name="schedule" value="${esc(q.get("schedule") || "")}" placeholder="schedule id"></label>
    </form>
    <div class="scroll-x"><table id="runs"><thead><tr><th scope="col">Run</th><th scope="col">Flow</th><th scope="col">State</th><th scope="col">Created</th>
      <th scope="col">Duration</th><th scope="col">Origin</th><th scope="col">Message</th></tr></thead><tbody></tbody></table></div>
    <p><button id="more" hidden>Load more</button></p>`;
  const form = document.getElementById("filters");
  const apply = () => {  // a filter is a step in the history: Back undoes it
    const params = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) params.set(k, v);
    const url = "/runs" + (params.toString() ? "?" + params : "");
    if (url !== location.pathname + location.search) navigate(url);
  };
  form.addEventListener("change", apply);
  form.addEventListener("submit", (e) => { e.preventDefault(); apply(); });  // (Enter)
  let shown = [];
  let next = "";
  const query = (before, limit = RUNS_PAGE) => {
    const params = new URLSearchParams();
    for (const k of ["flow", "state", "schedule"]) if (q.get(k)) params.set(k, q.get(k));
    if (since) params.set("since", String(Date.now() / 1000 - Number(since)));
    params.set("limit", String(limit));
    if (before) params.set("before", before);
    return "/api/runs?" + params;
  };
  const tbody = document.querySelector("#runs tbody");
  const rowHtml = (r) => `<td class="mono"><a href="/runs/${esc(r.id)}">${esc(r.id.slice(0, 8))}</a></td>
        <td><span class="clip" title="${esc(r.flow_name)}">${esc(r.flow_name)}</span> <span class="muted">v${esc(r.flow_version)}</span></td>
        <td>${badge(r.state)}${r.late ? ` <span class="st st-late" title="${esc(r.late_reason)}">late</span>` : ""}${
          r.attempt > 1 ? ` <span class="muted">attempt ${r.attempt}</span>` : ""}</td><td>${timeHtml(r.created_at)}</td>
        <td data-duration></td>
        <td>${r.schedule_id ? `schedule <a href="/runs?schedule=${esc(r.schedule_id)}">${esc(r.schedule_id.slice(0, 8))}</a>` : ""}</td>
        <td class="muted wrap">${esc(r.message)}</td>`;
  // The rows by run id: a live update rewrites only the rows of runs that changed and
  // adds the new ones in place (rewriting 2,000 rows every second kept the page busy,
  // and took the focus off a run's link).
  const rows = new Map();
  const durations = () => {
    for (const r of shown) {
      const cell = rows.get(r.id)?.hwDuration;
      const d = fmtDur(runDuration(r));
      if (cell && cell.textContent !== d) cell.textContent = d;
    }
  };
  const draw = () => {
    const x = window.scrollX, y = window.scrollY;  // where the user scrolled to stays
    const key = focusKey(tbody);
    const seen = new Set();
    let at = tbody.firstElementChild;
    for (const r of shown) {
      const html = rowHtml(r);
      let tr = rows.get(r.id);
      seen.add(r.id);
      if (!tr || tr.hwHtml !== html) {
        const fresh = document.createElement("tr");
        fresh.dataset.run = r.id;
        fresh.innerHTML = html;
        fresh.hwHtml = html;
        fresh.hwDuration = fresh.querySelector("[data-duration]");
        if (tr) tr.replaceWith(fresh);
        if (at === tr) at = fresh;
        rows.set(r.id, tr = fresh);
      }
      tr.dataset.state = r.state;
      if (tr === at) at = at.nextElementSibling;
      else tbody.insertBefore(tr, at);  // (only rows out of place move: a move blurs)
    }
    for (const [id, tr] of rows) if (!seen.has(id)) { tr.remove(); rows.delete(id); }
    tbody.querySelector("tr.empty")?.remove();
    if (!shown.length) tbody.innerHTML = `<tr class="empty"><td colspan="7" class="muted">No runs.</td></tr>`;
    durations();
    restoreFocus(tbody, key);
    const more = document.getElementById("more");
    more.hidden = !next;
    window.scrollTo(x, y);
  };
  // What changed state is said (politely) to a screen reader: one run by name, or how
  // many; never each second's durations.
  const told = new Map();
  const tell = () => {
    const changed = shown.filter((r) => told.has(r.id) && told.get(r.id) !== r.state);
    for (const r of shown) told.set(r.id, r.state);
    if (changed.length === 1) announce(`Run ${changed[0].id.slice(0, 8)} (${changed[0].flow_name}) is ${changed[0].state}`);
    else if (changed.length > 1) announce(`${changed.length} runs changed state`);
  };
  // As many runs as are shown, read in pages of the most one read returns: a live
  // update keeps what "Load more" added (past 1,000 the list shrank to 1,000).
  const load = async () => {
    const want = Math.max(RUNS_PAGE, shown.length);
    let got = [], before = "";
    do {
      const body = await api(query(before, Math.min(RUNS_MAX, want - got.length)));
      if (!mine.live) return;
      got = got.concat(body.runs); before = body.next;
    } while (before && got.length < want);
    shown = got; next = before; draw(); tell();
  };
  const more = document.getElementById("more");
  more.onclick = async () => {
    let added = null;
    more.disabled = true;
    try {
      const body = await api(query(next));
      if (!mine.live) return;
      shown = shown.concat(body.runs); next = body.next; draw();
      for (const r of body.runs) told.set(r.id, r.state);
      added = body.runs.length ? body.runs[0].id : null;
    } catch (err) { failed(more, err); }
    more.disabled = false;
    // The focus stays on the button (disabled meanwhile: the focus was gone) or, with
    // no more to load, goes to the first run it added.
    if (!more.hidden) more.focus({ preventScroll: true });
    else if (added) rows.get(added)?.querySelector("a")?.focus({ preventScroll: true });
  };
  await load();
  follow("/api/runs/events", { runs: debounce(load, 300) });
  every(1000, () => { if (shown.some((r) => !TERMINAL.has(r.state))) durations(); });
}

// ---------------------------------------------------------------------- run

async function runPage(runId) {
  const state = { data: null, selectedNode: null, selectedKey: null, waiting: {},
    logsAfter: 0, logsDropped: 0, logsEnded: false };
  const mine = page;
  state.data = await api(`/api/runs/${encodeURIComponent(runId)}`);
  if (!mine.live) return;
  const run = state.data.run;
  if (run.id !== runId) history.replaceState(null, "", `/runs/${run.id}`);
  runId = run.id;
  setTitle(`Run ${run.id.slice(0, 8)} (${run.flow_name})`);
  main().innerHTML = `
    <div class="run-head"><h1 id="run-title" tabindex="-1"></h1><span id="run-state"></span>
      <span id="run-late" hidden></span>
      <button id="cancel" class="danger" hidden>Cancel run</button>
      <button id="retry" hidden title="run it again from its failure: what succeeded is kept">Retry</button></div>
    <div class="run-head meta" id="run-meta"></div>
    <div id="run-links"></div>
    <div class="meta" id="run-audit"></div>
    <div class="chips" id="totals"></div>
    <div class="cols">
      <div>
        <h2>Graph</h2><div id="dag"></div>
        <div class="legend">${STATES.filter((s) => s !== "MAPPED").map((s) =>
          `<span><i style="background:${color(s)}"></i>${s}</span>`).join("")}</div>
        <h2>Timeline</h2>
        <div id="timeline-wrap"><canvas id="timeline" height="160" role="img" aria-label="Timeline of the task runs"></canvas><div id="tip"></div></div>
      </div>
      <div>
        <h2 id="side-title">Task runs</h2>
        <div id="side" class="panel"></div>
      </div>
    </div>
    <h2>Logs <span class="muted" id="logs-scope"></span></h2>
    <p class="muted" id="logs-earlier" hidden><span></span> <button>Show from the first</button></p>
    <div class="logs" id="logs"><table><thead class="visually-hidden"><tr><th scope="col">Time</th><th scope="col">Level</th>
      <th scope="col">Task run</th><th scope="col">Message</th></tr></thead><tbody></tbody></table></div>
    <p><button id="logs-more" hidden>Load more</button></p>`;
  // After Cancel or Retry the button pressed is hidden: the focus goes to the other one
  // (Retry on the cancelled run, Cancel on the run running again), else the title.
  const focusHead = () => {
    const to = ["retry", "cancel", "run-title"].map((id) => document.getElementById(id))
      .find((el) => el && !el.hidden);
    to?.focus();
  };
  document.getElementById("cancel").onclick = async (e) => {
    if (!confirm("Cancel this run?")) return;
    try {
      const body = await api(`/api/runs/${runId}/cancel`, { method: "POST", body: {} });
      if (!mine.live) return;
      if (body.run) { state.data.run = { ...state.data.run, ...body.run }; drawRunHead(state); }
      if (e.target.hidden) focusHead();
    } catch (err) { failed(e.target, err); }
  };
  document.getElementById("retry").onclick = async (e) => {
    e.target.disabled = true;
    try {
      await api(`/api/runs/${runId}/retry`, { method: "POST", body: {} });
      if (!mine.live) return;
      await route();  // the run runs again: read it anew and follow its new attempt live
      focusHead();
    } catch (err) { e.target.disabled = false; failed(e.target, err); }
  };
  drawRunHead(state);
  drawDag(state, (node) => { state.selectedNode = node; state.selectedKey = null; state.sideShown = 0; drawSide(state); });
  performance.mark("headwater:run-drawn");  // the first render: head, totals, DAG
  drawSide(state);
  const timeline = await loadTimeline(runId, state);
  await loadLogs(runId, state, true);

  const refresh = paced(async () => {
    state.data = await api(`/api/runs/${runId}`);
    state.waiting = state.data.waiting;
    drawRunHead(state);
    updateDag(state);
    await drawSide(state);
    timeline.reload();
  }, 500);
  follow(`/api/runs/${runId}/events`, {
    // The stream starts (and restarts after a reconnect) with "run": read the task
    // runs again then, for what changed between the page's first read and the stream
    // (a task that started meanwhile stayed "scheduled" until its next change).
    run: (r) => { state.data.run = r; drawRunHead(state); refresh(); },
    tasks: refresh,
    waiting: (w) => { state.waiting = w; drawSide(state, true); },
    logs: () => loadLogs(runId, state, false),
    end: refresh,
  });
  every(1000, () => { if (!TERMINAL.has(state.data.run.state)) drawRunHead(state); });
}

// The run's parameters as the server describes them (a json value's preview, else its
// encoding and size: the server never decodes a value), in the flow's declared order
// (then any others by name): the stored map's order changed between loads.
function params(run, graph) {
  const given = run.parameters || {};
  const declared = ((graph && graph.parameters) || []).filter((n) => n in given);
  const rest = Object.keys(given).filter((n) => !declared.includes(n)).sort();
  const shown = [...declared, ...rest].map((name) => {
    const v = given[name];
    return `${esc(name)} = <code>${esc(v.preview || `${v.encoding}, ${fmtBytes(v.size_bytes)}`)}</code>`;
  });
  return shown.length ? ` <span id="run-params">parameters: ${shown.join(", ")}</span>` : "";
}

function drawRunHead(state) {
  const { run, totals } = state.data;
  const title = `${run.flow_name} v${run.flow_version}`;
  const head = document.getElementById("run-title");
  if (head.textContent !== title) head.textContent = title;
  const stateEl = document.getElementById("run-state");
  setHtml(stateEl, badge(run.state));
  // A state change is said to a screen reader (not the first drawing: the page says it).
  if (stateEl.dataset.state && stateEl.dataset.state !== run.state) {
    announce(`Run ${run.id.slice(0, 8)} is ${run.state}`);
  }
  stateEl.dataset.state = run.state;
  const cancel = document.getElementById("cancel"), retry = document.getElementById("retry");
  const had = document.activeElement;
  cancel.hidden = !CAN_OPERATE || TERMINAL.has(run.state);
  retry.hidden = !CAN_OPERATE || !RETRYABLE.has(run.state);
  // The focused button went (the run ended): the focus to the one shown, or the title.
  if ((had === cancel && cancel.hidden) || (had === retry && retry.hidden)) {
    (!retry.hidden ? retry : !cancel.hidden ? cancel : head).focus();
  }
  const late = document.getElementById("run-late");
  late.hidden = !run.late;
  setHtml(late, run.late ? `<span class="st st-late" title="${esc(fmtTime(run.late_at))}">late</span> ${esc(run.late_reason)}` : "");
  const result = run.result ? `<span id="run-result">result ${esc(fmtBytes(run.result.size_bytes))}: <code>${
    esc(run.result.preview || run.result.encoding)}</code></span>` : "";
  setHtml(document.getElementById("run-meta"), `<span class="mono">${esc(run.id)}</span>
    <span id="run-attempt" data-attempt="${run.attempt}">attempt ${run.attempt}${
      run.attempts.length > 1 ? ` of ${run.attempts.length}` : ""}</span>
    <span>created ${timeHtml(run.created_at)}</span>
    <span>duration ${esc(fmtDur(runDuration(run)))}</span>
    ${run.message ? `<span>${esc(run.message)}</span>` : ""}${result}${params(run, state.data.graph)}`);
  const links = [];
  if (run.schedule_id) links.push(`created by schedule <a href="/runs?schedule=${esc(run.schedule_id)}">${esc(run.schedule_id)}</a>`);
  if (run.parent_run_id) links.push(`subflow of <a href="/runs/${esc(run.parent_run_id)}">${esc(run.parent_run_id.slice(0, 8))}</a>`);
  for (const child of run.child_runs || []) {
    links.push(`subflow <a href="/runs/${esc(child.id)}" data-child="${esc(child.id)}">${esc(child.flow_name)} ${esc(child.id.slice(0, 8))}</a> ${badge(child.state)}`);
  }
  setHtml(document.getElementById("run-links"), links.map((l) => `<div>${l}</div>`).join(""));
  // Who did what to this run (the audit log: created, cancelled, retried), oldest first.
  setHtml(document.getElementById("run-audit"), (run.audit || []).map((a) =>
    `<div data-audit="${esc(a.action)}">${timeHtml(a.at)} · ${esc(a.action)} by <b>${esc(a.actor)}</b>${
      a.detail ? ` <span class="muted">(${esc(a.detail)})</span>` : ""}</div>`).join(""));
  const total = Object.values(totals).reduce((a, b) => a + b, 0);
  const done = Object.entries(totals).filter(([s]) => !["RUNNING", "RETRYING", "SCHEDULED", "PENDING"].includes(s))
    .reduce((a, [, n]) => a + n, 0);
  setHtml(document.getElementById("totals"), `<span data-total="${total}">${done} of ${total} task runs done</span>` +
    Object.entries(totals).map(([s, n]) => `<span class="st st-${s}" data-count="${s}">${n} ${s}</span>`).join(""));
}

// ---------------------------------------------------------------------- DAG

// Identical siblings (same name, same upstream and downstream tasks: a loop of calls)
// become one box with counts; mapped tasks are one box with their children's counts.
function groupNodes(nodes) {
  const down = {};
  for (const n of nodes) for (const u of n.upstream) (down[u] = down[u] || []).push(n.id);
  const sig = (n) => `${n.name}|${[...n.upstream].sort().join(",")}|${(down[n.id] || []).slice().sort().join(",")}`;
  const bySig = {};
  for (const n of nodes) (bySig[sig(n)] = bySig[sig(n)] || []).push(n);
  const boxOf = {}, boxes = [];
  for (const members of Object.values(bySig)) {
    if (members.length >= GROUP_MIN) {
      const id = "group:" + members[0].id;
      boxes.push({ id, name: members[0].name, members: members.map((m) => m.id), mapped: true,
        group: true, upstream: [] });
      for (const m of members) boxOf[m.id] = id;
    } else {
      for (const m of members) {
        boxes.push({ ...m, members: [m.id] });
        boxOf[m.id] = m.id;
      }
    }
  }
  const byId = {};
  for (const n of nodes) byId[n.id] = n;
  for (const box of boxes) {
    const ups = new Set();
    for (const id of box.members) {
      for (const u of byId[id].upstream) if (boxOf[u] && boxOf[u] !== box.id) ups.add(boxOf[u]);
    }
    box.upstream = [...ups];
  }
  return boxes;
}

function boxCounts(box, counts) {
  const out = {};
  for (const id of box.members) for (const [s, n] of Object.entries(counts[id] || {})) out[s] = (out[s] || 0) + n;
  return out;
}
function mainState(c) {
  for (const s of ["FAILED", "TIMED_OUT", "TRIGGER_FAILED", "RUNNING", "RETRYING", "SCHEDULED",
    "PENDING", "CANCELLED", "SUCCESS", "CACHED", "SKIPPED"]) if (c[s]) return s;
  return "PENDING";
}

function layout(boxes, width, height) {
  if (boxes.length <= DAGRE_MAX && window.dagre) {
    const g = new dagre.graphlib.Graph();
    g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 50, marginx: 12, marginy: 12 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const b of boxes) g.setNode(b.id, { width, height });
    for (const b of boxes) for (const u of b.upstream) g.setEdge(u, b.id);
    dagre.layout(g);
    const pos = {};
    for (const b of boxes) pos[b.id] = g.node(b.id);
    const edges = g.edges().map((e) => ({ from: e.v, to: e.w, points: g.edge(e).points }));
    return { pos, edges, w: g.graph().width, h: g.graph().height };
  }
  // Large graphs: longest-path layers, in order (linear time; dagre would take seconds).
  const rank = {}, byId = {};
  for (const b of boxes) byId[b.id] = b;
  const rankOf = (b) => {
    if (rank[b.id] !== undefined) return rank[b.id];
    rank[b.id] = 0;
    rank[b.id] = b.upstream.reduce((m, u) => Math.max(m, rankOf(byId[u]) + 1), 0);
    return rank[b.id];
  };
  const layers = [];
  for (const b of boxes) (layers[rankOf(b)] = layers[rankOf(b)] || []).push(b);
  const pos = {};
  let maxRows = 0;
  layers.forEach((layer, x) => layer.forEach((b, y) => {
    pos[b.id] = { x: 12 + width / 2 + x * (width + 50), y: 12 + height / 2 + y * (height + 12) };
    maxRows = Math.max(maxRows, y + 1);
  }));
  const edges = [];
  if (boxes.length < 3000) for (const b of boxes) for (const u of b.upstream) edges.push({ from: u, to: b.id });
  return { pos, edges, w: 24 + layers.length * (width + 50), h: 24 + maxRows * (height + 12) };
}

function drawDag(state, onSelect) {
  const el = document.getElementById("dag");
  const boxes = groupNodes(state.data.graph.nodes);
  state.boxes = boxes;
  const W = 170, H = 46;
  const { pos, edges, w, h } = layout(boxes, W, H);
  const line = (e) => {
    if (e.points) return e.points.map((p, i) => `${i ? "L" : "M"}${p.x},${p.y}`).join(" ");
    const a = pos[e.from], b = pos[e.to];
    return `M${a.x + W / 2},${a.y} L${b.x - W / 2},${b.y}`;
  };
  el.innerHTML = `<svg width="${w}" height="${h}" xmlns="http://www.w3.org/2000/svg">
    <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto">
      <path d="M0,0 L10,5 L0,10 z" fill="#64748b"/></marker></defs>
    ${edges.map((e) => `<path class="edge" d="${line(e)}" marker-end="url(#arrow)"/>`).join("")}
    ${boxes.map((b) => {
      const p = pos[b.id];
      return `<g class="node" tabindex="0" role="button" aria-pressed="false" aria-label="${esc(b.name)}" data-node="${esc(b.id)}" transform="translate(${p.x - W / 2},${p.y - H / 2})">
        <rect class="ring" x="-4" y="-4" width="${W + 8}" height="${H + 8}"/><rect class="box" width="${W}" height="${H}"/><g class="bar"></g>
        <text x="8" y="17">${esc(b.name.length > 22 ? b.name.slice(0, 21) + "…" : b.name)}${b.group ? ` ×${b.members.length}` : ""}</text>
        <text class="sub" x="8" y="33"></text></g>`;
    }).join("")}</svg>`;
  el.querySelector("svg").addEventListener("click", (e) => {
    const g = e.target.closest(".node");
    if (g) onSelect(g.dataset.node);
  });
  el.querySelector("svg").addEventListener("keydown", (e) => {  // a focused box: like a click
    const g = e.target.closest(".node");
    if (g && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); onSelect(g.dataset.node); }
  });
  updateDag(state);
}

function updateDag(state) {
  const W = 170;
  for (const b of state.boxes) {
    const g = document.querySelector(`#dag .node[data-node="${CSS.escape(b.id)}"]`);
    if (!g) continue;
    const c = boxCounts(b, state.data.counts);
    const total = Object.values(c).reduce((a, n) => a + n, 0);
    const s = total ? mainState(c) : "PENDING";
    g.dataset.state = s;
    const selected = state.selectedNode === b.id;
    g.classList.toggle("selected", selected);
    g.setAttribute("aria-pressed", String(selected));
    // (a box with nothing run yet, or only pending, keeps the plain border: PENDING's
    // pale grey is too faint against white to see the box by)
    g.querySelector("rect.box").style.stroke = total && s !== "PENDING" ? color(s) : "";
    const many = b.mapped || b.group || total > 1;
    const sub = !total ? "not started"
      // In the legend's order, not the order the store returned the task runs in.
      : many ? STATES.filter((k) => c[k]).map((k) => `${c[k]} ${k.toLowerCase()}`).join(", ")
        : s.toLowerCase();
    g.querySelector("text.sub").textContent = sub;
    // Its name for a screen reader: what the box shows, counts too (the name alone hid them).
    const label = `${b.name}${b.group ? ` ×${b.members.length}` : ""}: ${sub}`;
    if (g.getAttribute("aria-label") !== label) g.setAttribute("aria-label", label);
    g.dataset.counts = JSON.stringify(c);
    let x = 0, bars = "";
    for (const st of STATES) {
      if (!c[st]) continue;
      const wd = (W * c[st]) / total;
      bars += `<rect x="${x}" y="40" width="${wd}" height="6" fill="${color(st)}"/>`;
      x += wd;
    }
    g.querySelector(".bar").innerHTML = total ? bars : "";
  }
}

// ----------------------------------------------------------- side: task runs

// Replace a panel's content keeping the keyboard's place: the element focused in it
// has the focus again after the redraw (focusKey). A live update redrew the side panel
// and the focus went back to the page's top.
function redraw(panel, html) {
  keepFocus(panel, () => { panel.innerHTML = html; });
}

async function drawSide(state, waitingOnly = false) {
  const side = document.getElementById("side");
  const title = document.getElementById("side-title");
  if (state.selectedKey) {
    if (!waitingOnly) return drawTask(state, side, title);
    return;
  }
  const runId = state.data.run.id;
  const box = state.boxes.find((b) => b.id === state.selectedNode);
  const members = box ? box.members : null;
  let taskRuns = [];
  let total = 0;
  const runSize = Object.values(state.data.totals).reduce((a, n) => a + n, 0);
  // A large run (or a large group of tasks): list what needs a look, not 10,000 rows.
  const notable = runSize >= BIG_RUN && !(members && members.length === 1);
  // One task's runs (a mapped task's children), or all of them, page by page; a box of
  // several identical calls lists the first page of the run's, filtered to its own.
  let base = null, fetched = 0;
  if (members && members.length === 1) {
    base = `/api/runs/${runId}/tasks?task=${encodeURIComponent(members[0])}`;
  } else if (!members) {
    base = `/api/runs/${runId}/tasks?${notable ? "state=" + NOTABLE : ""}`;
  }
  if (base) {
    // As many as were shown before a reload, in reads of at most the API's 1,000 (one
    // read of 1,000 dropped what "Show 200 more" had added past it). (+1: a mapped
    // task's list holds its parent, which is not shown.)
    const want = Math.max(SIDE_PAGE + 1, state.sideShown || 0);
    for (;;) {
      const limit = Math.min(TASKS_MAX, want - taskRuns.length);
      const body = await api(`${base}&offset=${taskRuns.length}&limit=${limit}`);
      taskRuns = taskRuns.concat(body.task_runs); total = body.total;
      if (!body.task_runs.length || taskRuns.length >= Math.min(want, total)) break;
    }
    fetched = taskRuns.length;
  } else {
    const body = await api(`/api/runs/${runId}/tasks?limit=${SIDE_PAGE}`);
    const wanted = new Set(members);
    taskRuns = body.task_runs.filter((t) => wanted.has(t.task_id));
    total = taskRuns.length;
  }
  const isParent = (t) => t.state === "MAPPED";
  const parents = taskRuns.filter(isParent).length;
  taskRuns = taskRuns.filter((t) => !isParent(t));
  total -= parents;
  const row = (t) => {
    const waiting = state.waiting[`${runId}/${t.key}`] || t.waiting;
    // (the key is a button: the keyboard's way to the task run, named by its key)
    return `<tr class="clickable" data-key="${esc(t.key)}" data-state="${esc(t.state)}">
      <td class="wrap"><button type="button" class="key" data-key="${esc(t.key)}">${esc(t.key)}</button>${t.failure && BAD.has(t.state) ? `<div class="error">${esc(t.failure.type)}: ${esc(t.failure.message)}</div>` : ""}
        ${waiting ? `<div class="waiting">${esc(waiting)}</div>` : ""}</td>
      <td>${badge(t.state)}</td><td>${t.attempts}</td><td>${esc(fmtDur(t.duration))}</td>
      <td>${esc(t.worker)}</td></tr>`;
  };
  title.textContent = box ? `Task runs of ${box.name}` : "Task runs";
  const focus = focusKey(side);
  redraw(side, `${box ? `<p><a href="#" id="all-tasks">all task runs</a></p>` : ""}
    ${notable ? `<p class="muted">${runSize} task runs: failed, running and waiting ones are listed; select a task in the graph for its runs.</p>` : ""}
    <table id="task-runs"><thead><tr><th scope="col">Task run</th><th scope="col">State</th><th scope="col">Tries</th><th scope="col">Duration</th><th scope="col">Worker</th></tr></thead>
    <tbody>${taskRuns.map(row).join("")}</tbody></table>
    <p class="muted" id="shown"></p>`);
  let listed = taskRuns.length;
  const shownLine = () => {
    const more = base && listed < total;
    document.getElementById("shown").innerHTML = listed < total
      ? `${listed} of ${total} shown${more ? ` <button id="more-tasks">Show ${Math.min(SIDE_PAGE, total - listed)} more</button>` : ""}` : "";
    const button = document.getElementById("more-tasks");
    if (button) button.onclick = async () => {
      button.disabled = true;
      try {
        const body = await api(`${base}&offset=${fetched}&limit=${SIDE_PAGE}`);
        fetched += body.task_runs.length;
        const rows = body.task_runs.filter((t) => !isParent(t));
        side.querySelector("tbody").insertAdjacentHTML("beforeend", rows.map(row).join(""));
        listed += rows.length;
        state.sideShown = fetched;
        if (!body.task_runs.length) total = listed;  // (the run changed meanwhile)
        shownLine();
        // The focus (gone with the button) to the next "Show more", else the first
        // task run it added.
        const again = document.getElementById("more-tasks");
        if (again) again.focus({ preventScroll: true });
        else if (rows.length) side.querySelector(`button.key[data-key="${CSS.escape(rows[0].key)}"]`)?.focus();
      } catch (err) { button.disabled = false; failed(button, err); }
    };
  };
  shownLine();
  restoreFocus(side, focus);  // (a focused "Show more" is drawn again by shownLine)
  const select = async (tr, keyboard) => {
    state.selectedKey = tr.dataset.key;
    loadLogs(runId, state, true);
    await drawSide(state);
    if (keyboard) document.getElementById("back")?.focus();  // (the row is gone)
  };
  side.querySelector("tbody").addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (tr) select(tr, false);
  });
  side.querySelector("tbody").addEventListener("keydown", (e) => {  // like a click
    const tr = e.target.closest("tr");
    if (tr && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); select(tr, true); }
  });
  const all = document.getElementById("all-tasks");
  if (all) all.onclick = (e) => { e.preventDefault(); state.selectedNode = null; state.sideShown = 0; updateDag(state); drawSide(state); };
  updateDag(state);
}

async function drawTask(state, side, title) {
  const runId = state.data.run.id;
  const t = await api(`/api/runs/${runId}/tasks/${encodeURIComponent(state.selectedKey)}`);
  title.textContent = `Task run ${t.key}`;
  const waiting = state.waiting[`${runId}/${t.key}`] || t.waiting;
  // A failure and what caused it (a failed subflow's: the child's task's error).
  const failure = (f, depth = 0) => f ? `<div class="failure"><p class="error"><b>${esc(f.type)}</b>: ${esc(f.message)}</p>
      ${f.traceback ? `<pre class="traceback">${esc(f.traceback)}</pre>` : ""}
      ${f.cause && depth < 5 ? `<div class="cause"><p class="muted">caused by</p>${failure(f.cause, depth + 1)}</div>` : ""}</div>` : "";
  const children = (state.data.run.child_runs || []).filter((c) => c.parent_task_run === t.key);
  redraw(side, `<p><a href="#" id="back">← ${state.selectedNode ? "task runs of this task" : "all task runs"}</a></p>
    <dl class="kv" id="task-detail" data-state="${esc(t.state)}">
      <dt>State</dt><dd>${badge(t.state)}</dd>
      <dt>Attempts</dt><dd>${t.attempts}</dd>
      <dt>Worker</dt><dd>${esc(t.worker) || "—"}</dd>
      <dt>Duration</dt><dd>${esc(fmtDur(t.duration))}</dd>
      ${waiting ? `<dt>Waiting</dt><dd class="waiting">${esc(waiting)}</dd>` : ""}
      ${t.message ? `<dt>Message</dt><dd>${esc(t.message)}</dd>` : ""}
      ${children.length ? `<dt>Child runs</dt><dd>${children.map((c) =>
        `<div><a href="/runs/${esc(c.id)}" data-child="${esc(c.id)}">${esc(c.flow_name)} ${esc(c.id.slice(0, 8))}</a> ${badge(c.state)}</div>`).join("")}</dd>` : ""}
      ${t.result ? `<dt>Result</dt><dd><span class="muted">${esc(t.result.encoding)}, ${esc(fmtBytes(t.result.size_bytes))}</span>
        <pre class="result">${esc(t.result.preview || "(not shown: the server does not decode " + t.result.encoding + ")")}</pre></dd>` : ""}
    </dl>
    <h2>Attempts</h2>
    <table id="attempts"><thead><tr><th scope="col">#</th><th scope="col">State</th><th scope="col">Started</th><th scope="col">Duration</th></tr></thead><tbody>
      ${t.attempt_list.map((a) => `<tr data-attempt="${a.number}"><td>${a.number}</td><td>${badge(a.state)}</td>
        <td>${timeHtml(a.started_at || a.scheduled_at, true)}</td><td>${esc(fmtDur(a.duration))}</td></tr>
        ${a.failure ? `<tr><td></td><td colspan="3">${failure(a.failure)}</td></tr>` : ""}`).join("")}
    </tbody></table>`);
  document.getElementById("back").onclick = (e) => {
    e.preventDefault(); state.selectedKey = null; drawSide(state); loadLogs(runId, state, true);
  };
}

// ------------------------------------------------------------------ timeline

async function loadTimeline(runId, state) {
  const canvas = document.getElementById("timeline");
  const tip = document.getElementById("tip");
  let rows = [], t0 = 0, t1 = 1, rowH = 14, skew = 0;  // skew: server clock - ours
  const running = () => rows.some((r) => r[4] === null);
  const draw = () => {
    if (running()) {  // bars of running task runs (and the axis) grow until now
      const now = Date.now() / 1000 + skew;
      t1 = rows.reduce((a, r) => Math.max(a, r[4] ?? now), t0 + 1e-3);
    }
    const width = canvas.clientWidth || 600;
    // At most 400 px: many task runs share a pixel row (a dense band shows the shape).
    rowH = rows.length ? Math.min(16, 400 / rows.length) : 16;
    if (rowH >= 1) rowH = Math.floor(rowH);
    const height = Math.max(60, rows.length * rowH + 22);
    const ratio = window.devicePixelRatio || 1;
    canvas.width = width * ratio; canvas.height = height * ratio;
    canvas.style.height = height + "px";
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, width, height);
    const label = rowH >= 12 ? 140 : 0;
    const span = Math.max(1e-3, t1 - t0);
    const x = (t) => label + ((t - t0) / span) * (width - label - 8);
    ctx.font = "11px system-ui";
    rows.forEach((r, i) => {
      const [key, , st, start, end] = r;
      const y = 4 + i * rowH;
      ctx.fillStyle = color(st);
      if (start !== null) {
        const x0 = x(start), x1 = Math.max(x0 + 2, x(end ?? t1));
        ctx.fillRect(x0, y, x1 - x0, rowH >= 4 ? rowH - 2 : Math.max(rowH, 0.5));
      }
      if (label) { ctx.fillStyle = "#1d2430"; ctx.fillText(key.length > 22 ? key.slice(0, 21) + "…" : key, 4, y + rowH - 3); }
    });
    ctx.fillStyle = "#5b6472";  // (--muted)
    ctx.fillText(`${fmtDur(span)} from ${fmtClock(t0)}`, label + 2, height - 6);
    canvas.dataset.rows = String(rows.length);
    // (a picture: its name says what it shows, and where the same is said in words)
    const name = rows.length ? `Timeline of ${rows.length} task run${rows.length === 1 ? "" : "s"} over ${
      fmtDur(span)} from ${fmtClock(t0)}; the task runs list beside it has each one` : "Timeline: no task run has started";
    if (canvas.getAttribute("aria-label") !== name) canvas.setAttribute("aria-label", name);
    if (rows.length) performance.mark("headwater:timeline-drawn");
  };
  const load = async () => {
    const body = await api(`/api/runs/${runId}/timeline`);
    rows = body.rows.filter((r) => r[3] !== null).sort((a, b) => a[3] - b[3]);
    skew = body.now - Date.now() / 1000;
    t0 = rows.length ? rows[0][3] : 0;
    const ends = rows.map((r) => r[4] ?? body.now);
    t1 = ends.reduce((a, b) => Math.max(a, b), t0 + 1e-3);
    draw();
  };
  const reload = paced(load, 2000);  // every task run's bars: the largest reload
  every(1000, () => { if (running()) draw(); });
  canvas.addEventListener("mousemove", (e) => {
    const i = Math.floor((e.offsetY - 4) / rowH);
    const r = rows[i];
    if (!r) { tip.style.display = "none"; return; }
    tip.style.display = "block";
    tip.style.left = e.offsetX + 12 + "px"; tip.style.top = e.offsetY + 8 + "px";
    tip.textContent = `${r[0]}: ${r[2]}, ${fmtDur((r[4] ?? Date.now() / 1000 + skew) - r[3])}${r[6] ? " on " + r[6] : ""}`;
  });
  canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  canvas.addEventListener("click", (e) => {
    const r = rows[Math.floor((e.offsetY - 4) / rowH)];
    if (r) { state.selectedKey = r[0]; drawSide(state); loadLogs(runId, state, true); }
  });
  load();
  return { reload };
}

// ---------------------------------------------------------------------- logs

function loadLogs(runId, state, reset) {
  // One read at a time, in order: "logs" events come faster than a page is read, and
  // two reads from the same cursor showed the same records twice.
  const read = (state.logsRead || Promise.resolve()).then(() => readLogs(runId, state, reset));
  state.logsRead = read.catch(() => {});
  return read;
}

async function readLogs(runId, state, reset) {
  const body = document.querySelector("#logs tbody");
  if (!body) return;
  if (reset) { state.logsAfter = 0; state.logsDropped = 0; body.innerHTML = ""; }
  const scope = state.selectedKey ? `key=${encodeURIComponent(state.selectedKey)}` : "";
  document.getElementById("logs-scope").textContent = state.selectedKey ? `of ${state.selectedKey}` : "of every task run";
  const page = await api(`/api/runs/${runId}/logs?after=${state.logsAfter}&limit=1000&${scope}`);
  const box = document.getElementById("logs");
  const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  body.insertAdjacentHTML("beforeend", page.entries.map((e) => `<tr data-seq="${e.seq}">
    <td class="mono muted">${timeHtml(e.at, true)}</td><td class="lvl-${esc(e.level)}">${esc(e.level)}</td>
    <td class="mono wrap">${esc(e.key)}${e.attempt > 1 ? ` #${e.attempt}` : ""}</td><td><pre>${esc(e.message)}</pre></td></tr>`).join(""));
  state.logsAfter = page.next;
  // The newest LOGS_KEPT records stay: a followed chatty run added rows without end
  // (6,864 after a minute) and the page slowed down. What went is said, with a way to
  // its start.
  const records = body.querySelectorAll("tr[data-seq]");
  if (records.length > LOGS_KEPT) {
    const height = box.scrollHeight;
    for (let i = 0; i < records.length - LOGS_KEPT; i++) records[i].remove();
    state.logsDropped += records.length - LOGS_KEPT;
    if (!atEnd) box.scrollTop -= height - box.scrollHeight;  // (the lines read stay put)
  }
  const earlier = document.getElementById("logs-earlier");
  earlier.hidden = !state.logsDropped;
  if (state.logsDropped) {
    earlier.querySelector("span").textContent = `${state.logsDropped.toLocaleString("en")} earlier records are not shown (the page keeps the newest ${
      LOGS_KEPT.toLocaleString("en")}; headwater runs logs ${runId} prints them all).`;
    earlier.querySelector("button").onclick = () => loadLogs(runId, state, true);
  }
  if (atEnd) box.scrollTop = box.scrollHeight;
  const more = document.getElementById("logs-more");
  more.hidden = !page.more;
  more.onclick = () => loadLogs(runId, state, false);
  const over = TERMINAL.has(state.data.run.state);  // (a finished run will have no more)
  // (Records, not rows: the placeholder is a row, and a read that found nothing more
  // took it for a record and removed it.)
  if (!body.querySelector("tr[data-seq]")) body.innerHTML = `<tr class="empty"><td class="muted">No log records${over ? "" : " yet"}.</td></tr>`;
  else body.querySelector("tr.empty")?.remove();
}

// --------------------------------------------------------------------- flows

async function flowsPage() {
  const { flows } = await api("/api/flows");
  main().innerHTML = `<h1>Flows</h1><div class="scroll-x"><table id="flows"><thead><tr><th scope="col">Flow</th><th scope="col">Versions</th><th scope="col">Value-dependent builds</th><th scope="col">Runs</th></tr></thead><tbody>
    ${flows.map((f) => `<tr data-flow="${esc(f.name)}"><td class="wrap"><a href="/flows/${encodeURIComponent(f.name)}">${esc(f.name)}</a></td>
      <td>${f.versions.map((v) => `<a href="/flows/${encodeURIComponent(f.name)}?version=${encodeURIComponent(v)}">v${esc(v)}</a>`).join(" ")}</td>
      <td>${f.value_dependent_graphs}</td><td><a href="/runs?flow=${encodeURIComponent(f.name)}">runs</a></td></tr>`).join("")
      || `<tr><td colspan="4" class="muted">No flows registered.</td></tr>`}</tbody></table></div>`;
}

async function flowPage(name) {
  const version = new URLSearchParams(location.search).get("version") || "";
  const [{ graph }, { flows }] = await Promise.all([
    api(`/api/flows/${encodeURIComponent(name)}?version=${encodeURIComponent(version)}`), api("/api/flows")]);
  const versions = (flows.find((f) => f.name === name) || { versions: [] }).versions;
  setTitle(`Flow ${graph.name} v${graph.version}`);
  main().innerHTML = `<h1>${esc(graph.name)} v${esc(graph.version)}</h1>
    <p>${versions.map((v) => `<a href="/flows/${encodeURIComponent(name)}?version=${encodeURIComponent(v)}">v${esc(v)}</a>`).join(" · ")}
     · <a href="/runs?flow=${encodeURIComponent(name)}">runs of this flow</a></p>
    ${graph.description ? `<p class="muted">${esc(graph.description)}</p>` : ""}
    <div id="dag"></div>
    <h2>Tasks</h2><div class="scroll-x"><table id="flow-tasks"><thead><tr><th scope="col">Task</th><th scope="col">Type</th><th scope="col">Mapped</th><th scope="col">Retries</th><th scope="col">Timeout</th><th scope="col">Labels</th><th scope="col">Upstream</th></tr></thead><tbody>
    ${graph.nodes.map((n) => `<tr><td>${esc(n.id)}</td><td class="mono">${esc(n.task_type)}</td><td>${n.mapped ? "yes" : ""}</td>
      <td>${n.retries || ""}</td><td>${n.timeout ? esc(fmtDur(n.timeout)) : ""}</td>
      <td>${esc(Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(", "))}</td><td>${esc(n.upstream.join(", "))}</td></tr>`).join("")}
    </tbody></table></div>`;
  const state = { data: { graph, counts: {} }, selectedNode: null };
  drawDag(state, () => {});
}

// ----------------------------------------------------------------- schedules

async function schedulesPage() {
  const mine = page;
  const load = async () => {
    const { schedules } = await api("/api/schedules");
    if (!mine.live) return;
    main().innerHTML = `<h1>Schedules</h1><div class="scroll-x"><table id="schedules"><thead><tr><th scope="col">Schedule</th><th scope="col">Flow</th><th scope="col">When</th>
      <th scope="col">Next run</th><th scope="col">State</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead><tbody>
      ${schedules.map((s) => {
        const named = `schedule ${s.name || s.id.slice(0, 8)}`;
        const [action, label] = s.paused ? ["resume", "Resume"] : ["pause", "Pause"];
        return `<tr data-schedule="${esc(s.id)}" data-paused="${s.paused}">
        <td><a class="mono" href="/runs?schedule=${esc(s.id)}">${esc(s.id.slice(0, 8))}</a>${s.name ? ` <span class="wrap" data-name>${esc(s.name)}</span>` : ""}</td>
        <td class="wrap">${esc(s.flow_name)}${s.flow_version ? ` v${esc(s.flow_version)}` : ""}</td>
        <td>${s.every ? `every ${esc(fmtDur(s.every))}` : `cron <code>${esc(s.cron)}</code> ${esc(s.timezone)}`}</td>
        <td>${s.paused ? "—" : timeHtml(s.next_run_at)}</td>
        <td>${s.paused ? `<span class="st st-CANCELLED">paused</span>` : `<span class="st st-SUCCESS">active</span>`}</td>
        <td>${CAN_OPERATE ? `<button data-action="${action}" aria-label="${esc(`${label} ${named}`)}">${label}</button>` : ""}</td></tr>`;
      }).join("")
        || `<tr><td colspan="6" class="muted">No schedules.</td></tr>`}</tbody></table></div>`;
    main().querySelector("tbody").addEventListener("click", async (e) => {
      const button = e.target.closest("button");
      if (!button) return;
      const focused = document.activeElement === button;
      button.disabled = true;
      const id = button.closest("tr").dataset.schedule;
      try {
        await api(`/api/schedules/${id}/${button.dataset.action}`, { method: "POST" });
        await load();
        // The focus (gone with the redrawn table) to the same schedule's button: Pause is
        // now Resume.
        if (focused) main().querySelector(`tr[data-schedule="${CSS.escape(id)}"] button`)?.focus();
      } catch (err) { button.disabled = false; failed(button, err); if (focused) button.focus(); }
    });
  };
  await load();
}

// ------------------------------------------------------------------- workers

async function workersPage() {
  const mine = page;
  let workers = [];
  let drawn = null;  // what the rows were drawn from, but for the times and slots
  main().innerHTML = `<h1>Workers</h1><div class="scroll-x"><table id="workers"><thead><tr><th scope="col">Worker</th><th scope="col">State</th>
    <th scope="col">Capabilities</th><th scope="col">Labels</th><th scope="col">Slots used</th><th scope="col">Last heartbeat</th><th scope="col">Connected</th>
    <th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
    <tbody></tbody></table></div><p class="muted" id="more-workers" hidden></p>`;
  const tbody = main().querySelector("#workers tbody");
  const moreNote = main().querySelector("#more-workers");
  // The API lists at most 1,000 (online first, then by name); say how many it left out.
  const got = (body) => {
    workers = body.workers;
    moreNote.hidden = !body.more;
    moreNote.textContent = body.more ? `${body.more.toLocaleString("en")} more worker${body.more === 1
      ? " is" : "s are"} not listed here (the first ${workers.length.toLocaleString("en")} are: online `
      + `ones first, then by name); \`headwater workers `
      + "list\` lists every one." : "";
    draw();
  };
  const row = (w) => `<tr data-worker="${esc(w.name)}" data-online="${w.online}" data-draining="${w.draining}">
    <td>${esc(w.name)}<div class="muted mono">${esc(w.worker_id.slice(0, 12))}</div></td>
    <td><span class="st st-${w.online ? "online" : "offline"}">${w.online ? "online" : "offline"}</span>${
      w.draining ? ` <span class="st st-draining" title="takes no new work${w.exit_when_idle ? "; exits once idle" : ""}">drained</span>` : ""}</td>
    <td class="mono wrap">${w.capabilities.map(esc).join("<br>")}</td>
    <td class="wrap">${esc(Object.entries(w.labels).map(([k, v]) => `${k}=${v}`).join(", "))}</td>
    <td data-slots></td><td data-seen></td><td>${timeHtml(w.connected_at)}</td>
    <td>${CAN_OPERATE ? `<button data-action="${w.draining ? "resume" : "drain"}" aria-label="${
      esc(`${w.draining ? "Resume" : "Drain"} worker ${w.name}`)}" title="${w.draining
      ? "let it take work again" : "give it no new work; what it runs finishes"}">${w.draining ? "Resume" : "Drain"}</button>` : ""}</td></tr>`;
  // Every second: the rows are redrawn only when the workers or their states changed;
  // otherwise only the slots and heartbeat times are written, in place (a redraw each
  // second took the focus off a Drain button and made clicks land on removed rows).
  const draw = () => {
    const shape = JSON.stringify(workers.map((w) => [w.name, w.worker_id, w.online, w.draining,
      w.exit_when_idle, w.capabilities, w.labels, w.connected_at]));
    if (shape !== drawn) {
      drawn = shape;
      keepFocus(tbody, () => {
        tbody.innerHTML = workers.map(row).join("")
          || `<tr><td colspan="8" class="muted">No worker has connected.</td></tr>`;
      });
    }
    workers.forEach((w, i) => {
      const tr = tbody.rows[i];
      const slots = `${w.slots_used} / ${w.slots}`, seen = ago(w.last_seen);
      const [slotsCell, seenCell] = [tr.querySelector("[data-slots]"), tr.querySelector("[data-seen]")];
      if (slotsCell.textContent !== slots) slotsCell.textContent = slots;
      if (seenCell.textContent !== seen) seenCell.textContent = seen;
    });
  };
  tbody.addEventListener("click", async (e) => {
    const button = e.target.closest("button");
    if (!button) return;
    const focused = document.activeElement === button;
    button.disabled = true;
    const name = button.closest("tr").dataset.worker;
    try {
      const body = await api(`/api/workers/${encodeURIComponent(name)}/${button.dataset.action}`, { method: "POST" });
      if (!mine.live) return;
      got(body);
      // The focus (gone while the button was disabled) to the worker's button: Drain is
      // now Resume.
      if (focused) tbody.querySelector(`tr[data-worker="${CSS.escape(name)}"] button`)?.focus();
    } catch (err) { button.disabled = false; failed(button, err); if (focused) button.focus(); }
  });
  const load = async () => {
    const body = await api("/api/workers");
    if (!mine.live) return;
    got(body);
  };
  await load();
  // "seen": the online workers' last message times (pushed every few seconds).
  const seen = (times) => { for (const w of workers) if (w.name in times) w.last_seen = times[w.name]; };
  follow("/api/workers/events", { workers: debounce(load, 500), seen });
  every(1000, draw);
}

// --------------------------------------------------------------------- audit

const AUDIT_SHOWN = 200;  // entries the page lists (the newest; filters reach older ones)

// Where the UI shows an audit entry's object ("": nowhere): a run's page, a flow
// version's graph, a schedule's runs.
function auditHref(a) {
  const id = a.object_id;
  if (a.object_kind === "flow_run") return `/runs/${encodeURIComponent(id)}`;
  if (a.object_kind === "schedule") return `/runs?schedule=${encodeURIComponent(id)}`;
  const colon = id.lastIndexOf(":");  // a flow version is NAME:VERSION
  if (a.object_kind === "flow" && colon > 0) {
    return `/flows/${encodeURIComponent(id.slice(0, colon))}?version=${encodeURIComponent(id.slice(colon + 1))}`;
  }
  return "";
}

async function auditPage() {
  const q = new URLSearchParams(location.search);
  const params = new URLSearchParams();
  for (const k of ["kind", "object"]) if (q.get(k)) params.set(k, q.get(k));
  params.set("limit", String(AUDIT_SHOWN));
  const { entries, kinds } = await api("/api/audit?" + params);
  main().innerHTML = `<h1>Audit log</h1>
    <p class="muted">Who (a credential name) did what, newest first.</p>
    <form class="filters" id="filters">
      <label>Kind<select name="kind"><option value="">any</option>${kinds.map((k) =>
        `<option value="${esc(k)}" ${k === q.get("kind") ? "selected" : ""}>${esc(k)}</option>`).join("")}</select></label>
      <label>Object<input name="object" value="${esc(q.get("object") || "")}" placeholder="id or name"></label>
    </form>
    <div class="scroll-x"><table id="audit"><thead><tr><th scope="col">Time</th><th scope="col">Credential</th><th scope="col">Action</th><th scope="col">Object</th>
      <th scope="col">Detail</th></tr></thead><tbody>
      ${entries.map((a) => {
        const href = auditHref(a);
        const shown = a.object_kind === "flow_run" ? a.object_id.slice(0, 8) : a.object_id;
        const object = href ? `<a href="${esc(href)}" title="${esc(a.object_id)}">${esc(shown)}</a>` : esc(shown);
        return `<tr data-action="${esc(a.action)}" data-kind="${esc(a.object_kind)}" data-object="${esc(a.object_id)}">
          <td>${timeHtml(a.at)}</td><td><b>${esc(a.actor)}</b></td><td class="mono">${esc(a.action)}</td>
          <td class="wrap">${esc(a.object_kind)} <span class="mono">${object}</span></td><td class="muted wrap">${esc(a.detail)}</td></tr>`;
      }).join("") || `<tr><td colspan="5" class="muted">No entries.</td></tr>`}</tbody></table></div>
    ${entries.length === AUDIT_SHOWN ? `<p class="muted">The newest ${AUDIT_SHOWN} entries: filter by kind or object for older ones.</p>` : ""}`;
  const form = document.getElementById("filters");
  const apply = () => {  // a filter is a step in the history: Back undoes it
    const chosen = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) chosen.set(k, v);
    const url = "/audit" + (chosen.toString() ? "?" + chosen : "");
    if (url !== location.pathname + location.search) navigate(url);
  };
  form.addEventListener("change", apply);
  form.addEventListener("submit", (e) => { e.preventDefault(); apply(); });  // (Enter)
}

// ---------------------------------------------------------------------- start

if (SESSION.auth) {
  const user = document.getElementById("user");
  user.hidden = false;
  user.csrf_token.value = SESSION.csrf;
  document.getElementById("user-name").textContent = `${SESSION.name} (${SESSION.role})`;
}
route();
