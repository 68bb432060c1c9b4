// The Tidings inbox page: a bell with the unread count, the list, mark read / all read / dismiss.
// The user token comes from the URL fragment (#token=...; never sent to a server) and is kept in
// sessionStorage. Live updates arrive over Server-Sent Events; EventSource reconnects by itself
// and sends Last-Event-ID, so the server replays what was missed.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = { items: new Map(), order: [], cursor: null, unread: 0, total: 0 };

  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("tidings-token", fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = sessionStorage.getItem("tidings-token");

  function problem(text) {
    $("problem").textContent = text;
    $("problem").hidden = !text;
  }

  async function api(method, path) {
    const answer = await fetch(path, { method, headers: { authorization: `Bearer ${token}` } });
    if (!answer.ok) {
      let detail = answer.statusText;
      try { detail = (await answer.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new Error(`${answer.status}: ${detail}`);
    }
    return answer.json();
  }

  function setCounts(unread, total) {
    state.unread = unread;
    if (total !== undefined) state.total = total;
    const badge = $("badge");
    badge.textContent = unread > 99 ? "99+" : String(unread);
    badge.hidden = unread === 0;
    document.title = unread ? `(${unread}) Tidings inbox` : "Tidings inbox";
    $("summary").textContent = unread ? `${unread} unread` : "all read";
  }

  function when(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? "" : d.toLocaleString();
  }

  function button(label, cls, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.textContent = label;
    b.addEventListener("click", onClick);
    return b;
  }

  function row(item) {
    const li = document.createElement("li");
    li.dataset.id = item.id;
    li.className = item.read ? "read" : "unread";
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = item.title;
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = item.body;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `${item.category} · ${when(item.created_at)}`;
    const actions = document.createElement("div");
    actions.className = "actions";
    if (!item.read) actions.append(button("Mark read", "read", () => markRead(item.id)));
    actions.append(button("Dismiss", "dismiss", () => dismiss(item.id)));
    li.append(title, body, meta, actions);
    if (item.action_url) {
      const a = document.createElement("a");
      a.className = "action";
      a.href = item.action_url;
      a.rel = "noopener noreferrer";
      a.textContent = item.action_label || "Open";
      meta.append(" · ", a);
    }
    return li;
  }

  function render() {
    const list = $("list");
    list.replaceChildren(...state.order.map((id) => row(state.items.get(id))));
    $("empty").hidden = state.order.length > 0;
    $("more").hidden = state.cursor === null;
  }

  function upsert(item, atTop) {
    if (!state.items.has(item.id)) {
      if (atTop) state.order.unshift(item.id); else state.order.push(item.id);
    }
    state.items.set(item.id, item);
  }

  function remove(ids) {
    for (const id of ids) state.items.delete(id);
    state.order = state.order.filter((id) => state.items.has(id));
  }

  async function loadFirstPage() {
    const page = await api("GET", "/api/inbox?limit=20");
    state.items.clear();
    state.order = [];
    for (const item of page.items) upsert(item, false);
    state.cursor = page.next_cursor;
    setCounts(page.unread, page.total);
    render();
  }

  async function loadMore() {
    if (state.cursor === null) return;
    const page = await api("GET", `/api/inbox?limit=20&cursor=${state.cursor}`);
    for (const item of page.items) upsert(item, false);
    state.cursor = page.next_cursor;
    setCounts(page.unread, page.total);
    render();
  }

  function setRead(id) {
    const item = state.items.get(id);
    if (item && !item.read) state.items.set(id, { ...item, read: true });
  }

  async function markRead(id) {
    try {
      const answer = await api("POST", `/api/inbox/${encodeURIComponent(id)}/read`);
      setRead(id);
      setCounts(answer.unread);
      render();
    } catch (err) { problem(`Could not mark it read (${err.message}).`); }
  }

  async function markAll() {
    try {
      await api("POST", "/api/inbox/read-all");
      for (const id of state.order) setRead(id);
      setCounts(0);
      render();
    } catch (err) { problem(`Could not mark all read (${err.message}).`); }
  }

  async function dismiss(id) {
    try {
      const answer = await api("POST", `/api/inbox/${encodeURIComponent(id)}/dismiss`);
      remove([id]);
      setCounts(answer.unread);
      render();
    } catch (err) { problem(`Could not dismiss it (${err.message}).`); }
  }

  function connect() {
    const source = new EventSource(`/api/inbox/stream?access_token=${encodeURIComponent(token)}`);
    const on = (type, handle) => source.addEventListener(type, (e) => {
      const data = JSON.parse(e.data);
      handle(data);
      setCounts(data.unread, data.total);
      render();
    });
    on("hello", (d) => {
      $("status").textContent = "live";
      $("status").className = "status live";
      problem("");
      if (!d.resumed) loadFirstPage().catch((err) => problem(`Could not load the inbox (${err.message}).`));
    });
    on("reset", () => { loadFirstPage().catch((err) => problem(`Could not load the inbox (${err.message}).`)); });
    on("new", (d) => upsert(d.item, true));
    on("read", (d) => setRead(d.id));
    on("read_all", () => { for (const id of state.order) setRead(id); });
    on("dismissed", (d) => remove([d.id]));
    on("expired", (d) => remove(d.ids));
    source.onerror = () => {
      $("status").textContent = source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…";
      $("status").className = "status";
      if (source.readyState === EventSource.CLOSED) problem("Live updates stopped: is your token still valid?");
    };
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("bell").addEventListener("click", () => {
      const panel = $("panel");
      panel.hidden = !panel.hidden;
      $("bell").setAttribute("aria-expanded", String(!panel.hidden));
    });
    $("mark-all").addEventListener("click", markAll);
    $("more").addEventListener("click", () => loadMore().catch((err) => problem(err.message)));
    if (!token) {
      problem("No user token: open this page with #token=<token> (see `tidings inbox token`).");
      $("status").textContent = "signed out";
      return;
    }
    connect();
  });
})();
