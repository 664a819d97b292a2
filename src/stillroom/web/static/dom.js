// A tiny element builder: h("tag.class", {attrs}, ...children). Text always goes in as text nodes, never as
// HTML, so stored content cannot inject markup.

export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

let idCounter = 0;
export function uid(prefix = "f") {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

// A labelled control: the label is a real <label for>, so screen readers and clicks both find the input.
export function field(label, control, hint) {
  control.id ||= uid();
  const hintEl = hint ? h("small.hint", { id: `${control.id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div.field", h("label", { for: control.id }, label), control, hintEl);
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
export function formatTime(seconds) {
  return seconds ? dateFormat.format(new Date(seconds * 1000)) : "—";
}

export function formatNumber(n) {
  return typeof n === "number" ? n.toLocaleString() : "—";
}

export function formatLatency(ms) {
  if (typeof ms !== "number") return "—";
  return ms >= 1000 ? `${(ms / 1000).toLocaleString(undefined, { maximumFractionDigits: 2 })} s`
    : `${Math.round(ms).toLocaleString()} ms`;
}

export function errorBox(error) {
  const box = h("div.error", { role: "alert" });
  if (!error) return box;
  box.append(h("strong", error.title || "Error"), " ", error.message || String(error));
  if (error.code) box.append(" ", h("code", error.code));
  return box;
}

export function showError(box, error) {
  box.replaceWith(errorBox(error));
}

// A modal confirmation built on <dialog>; resolves true when confirmed.
export function confirmDialog(title, text, action = "Delete") {
  return new Promise((resolve) => {
    const dialog = h("dialog.confirm", { "aria-labelledby": "confirm-title" },
      h("form", { method: "dialog" },
        h("h2", { id: "confirm-title" }, title),
        h("p", text),
        h("div.actions",
          h("button", { type: "submit", value: "cancel", class: "quiet" }, "Cancel"),
          h("button", { type: "submit", value: "ok", class: "danger" }, action))));
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
    dialog.querySelector("button.danger").focus();
  });
}

// A stylesheet the later views need, fetched the first time one of them is shown (not on a cold load).
export function loadStyles(name) {
  if (document.querySelector(`link[data-styles="${name}"]`)) return;
  const link = h("link", { rel: "stylesheet", href: `console/${name}`, dataset: { styles: name } });
  document.head.append(link);
}

// Polls `step` every `ms` while `node` stays in the page and `step` answers true (more to come).
export function poll(node, step, ms = 1500) {
  const tick = async () => {
    if (!node.isConnected) return;
    let again = false;
    try { again = await step(); } catch { again = true; }
    if (again && node.isConnected) setTimeout(tick, ms);
  };
  return tick();
}

export function badge(status) {
  const kind = { succeeded: "ok", completed: "ok", failed: "warn", cancelled: "muted", canceled: "muted" }[status] || "run";
  return h(`span.badge.status.${kind}`, status);
}
