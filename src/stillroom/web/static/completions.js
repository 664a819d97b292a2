// The Stored completions pane: filters (metadata, model, time range and full-text search, all answered by
// the server), the table with keyset pages, multi-select, select-all-matching with delete by filter (its
// dry-run count shown first), and the detail view (messages, answer, parameters, metadata editing,
// delete). Filters live in the URL hash, so a view can be bookmarked and the browser's back button walks
// the pages.

import { api, ApiError, can, listAll, server, session } from "./api.js";
import {
  confirmDialog, errorBox, field, formatLatency, formatNumber, formatTime, h, uid,
} from "./dom.js";
import { metadataEditor, renderMessage, renderChoice, summaryList } from "./detail.js";

const selected = new Set(); // ids, kept across pages until cleared or the filters change
let allMatching = null; // the dry-run count when every completion the filters match is selected, else null
const firstMessages = new Map(); // id -> first user message text (or "" when none)
let cursors = []; // `after` values of the pages before this one, for "Previous"
let filterKey = null;
let flash = null; // a one-time notice shown above the list (after a delete)

export function setFlash(text) {
  flash = text;
}

export function filtersFrom(params) {
  const metadata = [];
  for (const [name, value] of params) if (name.startsWith("m.")) metadata.push([name.slice(2), value]);
  return {
    model: params.get("model") || "",
    order: params.get("order") === "asc" ? "asc" : "desc",
    limit: /^(100|[1-9][0-9]?)$/.test(params.get("limit") || "") ? params.get("limit") : "20",
    from: params.get("from") || "",
    to: params.get("to") || "",
    q: params.get("q") || "",
    after: params.get("after") || "",
    metadata,
  };
}

export function hashFor(filters, extra = {}) {
  const params = new URLSearchParams();
  const all = { ...filters, ...extra };
  if (all.model) params.set("model", all.model);
  if (all.order !== "desc") params.set("order", all.order);
  if (all.limit !== "20") params.set("limit", all.limit);
  if (all.from) params.set("from", all.from);
  if (all.to) params.set("to", all.to);
  if (all.q) params.set("q", all.q);
  for (const [key, value] of all.metadata) params.append(`m.${key}`, value);
  if (all.after) params.set("after", all.after);
  const text = params.toString();
  return text ? `#/completions?${text}` : "#/completions";
}

// The range inputs hold local times ("2026-12-01T09:30:00"); the API takes unix seconds, `created_before`
// exclusive, so "To" includes its own second.
function seconds(local, end = false) {
  if (!local) return null;
  const time = new Date(local).getTime();
  return Number.isNaN(time) ? null : Math.floor(time / 1000) + (end ? 1 : 0);
}

export function listQuery(filters) {
  const query = [["limit", filters.limit], ["order", filters.order], ["after", filters.after], ["model", filters.model],
    ["created_after", seconds(filters.from)], ["created_before", seconds(filters.to, true)], ["search", filters.q]];
  for (const [key, value] of filters.metadata) query.push([`metadata[${key}]`, value]);
  return query;
}

// The filters as a JSON body: delete by filter (POST /organization/projects/{id}/chat_completions/delete),
// a Distill dataset and an eval's stored_completions source take the list's filter fields alike.
export function filterBody(filters) {
  const body = {};
  if (filters.metadata.length) body.metadata = Object.fromEntries(filters.metadata);
  if (filters.model) body.model = filters.model;
  if (seconds(filters.from) !== null) body.created_after = seconds(filters.from);
  if (seconds(filters.to, true) !== null) body.created_before = seconds(filters.to, true);
  if (filters.q) body.search = filters.q;
  return body;
}

function isFiltered(filters) {
  return Boolean(filters.model || filters.metadata.length || filters.from || filters.to || filters.q);
}

export function bulkPath() {
  const project = server.me?.project_id || session.project || "default";
  return `organization/projects/${encodeURIComponent(project)}/chat_completions/delete`;
}

function unauthorized(error) {
  if (error instanceof ApiError && error.status === 401) window.dispatchEvent(new Event("stillroom:unauthorized"));
}

// --- the filter form -----------------------------------------------------------------------------

export function pairRow(key = "", value = "") {
  const keyInput = h("input", { type: "text", name: "meta-key", value: key, "aria-label": "Metadata key", placeholder: "key" });
  const valueInput = h("input", { type: "text", name: "meta-value", value, "aria-label": "Metadata value", placeholder: "value" });
  const row = h("div.pair", keyInput, h("span.eq", { "aria-hidden": "true" }, "="), valueInput,
    h("button.quiet.icon", { type: "button", "aria-label": "Remove this pair", onclick: () => row.remove() }, "×"));
  return row;
}

function filterForm(filters, models) {
  const listId = uid("models");
  const model = h("input", { type: "text", name: "model", value: filters.model, list: listId, autocomplete: "off" });
  const search = h("input", { type: "search", name: "search", value: filters.q, autocomplete: "off",
    placeholder: "words; word* for a prefix" });
  const pairs = h("div.pairs", filters.metadata.map(([k, v]) => pairRow(k, v)));
  const from = h("input", { type: "datetime-local", name: "from", value: filters.from, step: "1" });
  const to = h("input", { type: "datetime-local", name: "to", value: filters.to, step: "1" });
  const order = h("select", { name: "order" },
    h("option", { value: "desc", selected: filters.order === "desc" }, "Newest first"),
    h("option", { value: "asc", selected: filters.order === "asc" }, "Oldest first"));
  const limit = h("select", { name: "limit" },
    [...new Set(["20", "50", "100", filters.limit])].map((n) => h("option", { value: n, selected: filters.limit === n }, n)));
  const form = h("form.filters", { role: "search", "aria-label": "Filter stored completions" },
    field("Search messages and answers", search),
    field("Model", model),
    h("datalist", { id: listId }, models.map((m) => h("option", { value: m }))),
    h("fieldset.metadata",
      h("legend", "Metadata (every pair must match)"),
      pairs,
      h("button.quiet", { type: "button", onclick: () => { const row = pairRow(); pairs.append(row); row.querySelector("input").focus(); } },
        "Add pair")),
    h("fieldset.range",
      h("legend", "Created"),
      field("From", from),
      field("To", to),
      h("small.hint", "Local time; both ends included.")),
    field("Order", order),
    field("Per page", limit),
    h("div.actions",
      h("button", { type: "submit" }, "Apply filters"),
      h("a.button.quiet", { href: "#/completions" }, "Reset")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const metadata = [];
    for (const row of pairs.children) {
      const [k, v] = row.querySelectorAll("input");
      if (k.value.trim()) metadata.push([k.value.trim(), v.value]);
    }
    location.hash = hashFor({
      model: model.value.trim(), order: order.value, limit: limit.value, from: from.value, to: to.value,
      q: search.value.trim(), metadata, after: "",
    });
  });
  return form;
}

// --- the table -----------------------------------------------------------------------------------

function chips(metadata, filters) {
  const entries = Object.entries(metadata || {});
  if (!entries.length) return h("span.muted", "—");
  return h("ul.chips", { "aria-label": "Metadata" }, entries.map(([key, value]) => h("li",
    h("a.chip", {
      href: hashFor(filters, { metadata: [...filters.metadata.filter(([k]) => k !== key), [key, value]], after: "" }),
      title: `Filter by ${key}=${value}`,
    }, h("span.k", key), h("span.v", value)))));
}

function tokens(usage) {
  if (!usage) return h("span.muted", "—");
  return h("span", { title: `prompt ${formatNumber(usage.prompt_tokens)} + completion ${formatNumber(usage.completion_tokens)}` },
    formatNumber(usage.total_tokens));
}

function row(item, filters, onSelect) {
  const box = h("input", { type: "checkbox", checked: allMatching !== null || selected.has(item.id),
    disabled: allMatching !== null, "aria-label": `Select ${item.id}` });
  box.addEventListener("change", () => {
    if (box.checked) selected.add(item.id);
    else selected.delete(item.id);
    onSelect();
  });
  const first = h("span.first", { "data-id": item.id }, firstMessages.get(item.id) ?? "…");
  const ext = item.stillroom || {};
  const status = [];
  if (ext.incomplete) status.push(h("span.badge.warn", { title: "The stream broke off or was abandoned: stored with what arrived" }, "incomplete"));
  if (ext.stream) status.push(h("span.badge", "stream"));
  return h("tr", { dataset: { id: item.id } },
    h("td.select", box),
    h("td", { "data-label": "Time" },
      h("a.open", { href: `#/completions/${encodeURIComponent(item.id)}?${hashFor(filters).split("?")[1] || ""}` },
        h("time", { datetime: new Date((item.created || 0) * 1000).toISOString() }, formatTime(item.created)))),
    h("td", { "data-label": "Model" }, item.model || "—"),
    h("td", { "data-label": "Metadata" }, chips(item.metadata, filters)),
    h("td.prompt", { "data-label": "First user message" }, first),
    h("td.num", { "data-label": "Tokens" }, tokens(item.usage)),
    h("td.num", { "data-label": "Latency" }, formatLatency(ext.latency_ms)),
    h("td", { "data-label": "Status" }, status.length ? status : h("span.muted", "complete")));
}

function firstUserText(messages) {
  const user = messages.find((m) => m.role === "user");
  if (!user) return "";
  if (typeof user.content === "string") return user.content;
  return user.content_parts ? "[non-text content]" : "";
}

// The list objects carry no input messages: fetch each row's first page of /messages, four at a time.
async function fillFirstMessages(table, ids) {
  const queue = ids.filter((id) => !firstMessages.has(id));
  const worker = async () => {
    while (queue.length) {
      const id = queue.shift();
      let text;
      try {
        text = firstUserText((await api(`chat/completions/${encodeURIComponent(id)}/messages`, { query: [["limit", "20"]] })).data);
      } catch {
        text = null;
      }
      if (text !== null) firstMessages.set(id, text);
      const cell = table.querySelector(`span.first[data-id="${CSS.escape(id)}"]`);
      if (cell) {
        cell.textContent = text === null ? "(could not load)" : text || "—";
        cell.title = text || "";
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  for (const cell of table.querySelectorAll("span.first")) {
    const text = firstMessages.get(cell.dataset.id);
    if (text !== undefined) cell.textContent = text || "—";
  }
}

function tableKeys(table) {
  table.addEventListener("keydown", (event) => {
    const links = [...table.querySelectorAll("a.open")];
    const at = links.indexOf(document.activeElement);
    const current = document.activeElement.closest("tr");
    if (event.key === "j" || event.key === "ArrowDown") {
      if (at >= 0 && at + 1 < links.length) { links[at + 1].focus(); event.preventDefault(); }
    } else if (event.key === "k" || event.key === "ArrowUp") {
      if (at > 0) { links[at - 1].focus(); event.preventDefault(); }
    } else if (event.key === "x" && current) {
      const box = current.querySelector("input[type=checkbox]");
      if (box) { box.click(); event.preventDefault(); }
    }
  });
}

// --- the pane ------------------------------------------------------------------------------------

export async function renderCompletions(view, params) {
  const filters = filtersFrom(params);
  const key = JSON.stringify({ ...filters, after: "" });
  if (key !== filterKey) {
    if (filterKey !== null) selected.clear();
    allMatching = null;
    filterKey = key;
    cursors = [];
  }
  const title = h("h1", { tabindex: "-1" }, "Stored completions");
  const status = h("div.status");
  if (flash) {
    status.append(h("p.notice", { role: "status" }, flash));
    flash = null;
  }
  const count = h("span.count", { "aria-live": "polite" });
  const acts = can("stored-completions/action");
  const deleteButton = h("button.danger", { type: "button", disabled: true, hidden: !acts }, "Delete selected");
  // Once every row of the page is selected: widen the selection to every match (counted by a dry run).
  const allMatchingButton = h("button.quiet", { type: "button", hidden: true }, "Select all matching");
  const clearButton = h("button.quiet", { type: "button", disabled: true }, "Clear selection");
  // Distill and Evaluate take the selected ids, or with none selected (or all matching) every completion
  // the filters match: the list's own filter parameters travel in the wizard's URL.
  const scope = () => {
    const params = new URLSearchParams(hashFor({ ...filters, order: "desc", limit: "20", after: "" }).split("?")[1] || "");
    if (selected.size && allMatching === null) params.set("ids", [...selected].join(","));
    return params.toString();
  };
  const distillButton = h("button", { type: "button", hidden: !acts, title: "Make a fine-tuning dataset and train a student",
    onclick: () => { location.hash = `#/distill?${scope()}`; } }, "Distill");
  const evaluateButton = h("button", { type: "button", hidden: !acts, title: "Grade the answers and compare models",
    onclick: () => { location.hash = `#/evaluate?${scope()}`; } }, "Evaluate");
  const onSelect = () => {
    if (allMatching !== null) {
      count.textContent = `All ${formatNumber(allMatching)} matching selected`;
      deleteButton.textContent = `Delete all ${formatNumber(allMatching)} matching`;
    } else {
      count.textContent = selected.size ? `${selected.size} selected`
        : acts ? "None selected: Distill and Evaluate take every match" : "None selected";
      deleteButton.textContent = "Delete selected";
    }
    const any = allMatching !== null || selected.size > 0;
    deleteButton.disabled = clearButton.disabled = !any;
    syncAll();
  };
  const allBox = h("input", { type: "checkbox", "aria-label": "Select every row on this page" });
  const body = h("tbody");
  const table = h("table.completions",
    h("caption.visually-hidden", "Stored completions; j and k move between rows, Enter opens, x selects"),
    h("thead", h("tr",
      h("th.select", { scope: "col" }, allBox),
      ["Time", "Model", "Metadata", "First user message", "Tokens", "Latency", "Status"].map((name) =>
        h("th", { scope: "col", class: ["Tokens", "Latency"].includes(name) ? "num" : "" }, name)))),
    body);
  const syncAll = () => {
    const boxes = [...body.querySelectorAll("input[type=checkbox]")];
    const on = boxes.filter((b) => b.checked).length;
    allBox.checked = boxes.length > 0 && on === boxes.length;
    allBox.indeterminate = on > 0 && on < boxes.length;
    allBox.disabled = allMatching !== null;
    // Delete by filter needs a filter (the server refuses to empty a project this way).
    allMatchingButton.hidden = !acts || allMatching !== null || !allBox.checked || !isFiltered(filters);
  };
  allBox.addEventListener("change", () => {
    const wanted = allBox.checked; // each row's click re-syncs the header box, so read it once
    for (const box of body.querySelectorAll("input[type=checkbox]")) {
      if (box.checked !== wanted) box.click();
    }
  });
  tableKeys(table);
  const pager = h("nav.pager", { "aria-label": "Pages" });
  const shown = h("p.shown.muted");
  view.replaceChildren(h("section.pane", { "aria-labelledby": "completions-title" },
    title, filterForm(filters, server.models),
    h("div.toolbar", { role: "toolbar", "aria-label": "Selection" }, count, allMatchingButton, distillButton, evaluateButton,
      deleteButton, clearButton),
    status, h("div.table-wrap", table), shown, pager,
    h("p.keys.muted", "Keys: ", h("kbd", "/"), " search, ", h("kbd", "j"), " ", h("kbd", "k"), " move, ",
      h("kbd", "Enter"), " open, ", h("kbd", "x"), " select.")));
  title.id = "completions-title";
  onSelect();
  clearButton.addEventListener("click", () => {
    selected.clear();
    allMatching = null;
    for (const box of body.querySelectorAll("input[type=checkbox]")) {
      box.checked = false;
      box.disabled = false;
    }
    onSelect();
  });
  allMatchingButton.addEventListener("click", async () => {
    allMatchingButton.disabled = true;
    try {
      const counted = await api(bulkPath(), { method: "POST", body: { ...filterBody(filters), dry_run: true } });
      allMatching = counted.matched;
      for (const box of body.querySelectorAll("input[type=checkbox]")) box.disabled = true;
    } catch (error) {
      status.replaceChildren(errorBox(error));
    } finally {
      allMatchingButton.disabled = false;
    }
    onSelect();
  });
  deleteButton.addEventListener("click", () => (allMatching !== null ? deleteMatching(status, filters) : deleteSelected(status, filters)));

  let page;
  body.append(h("tr", h("td.loading", { colspan: 8 }, "Loading…")));
  try {
    page = await api("chat/completions", { query: listQuery(filters) });
  } catch (error) {
    unauthorized(error);
    body.replaceChildren();
    status.append(errorBox(error));
    return;
  }
  const items = page.data;
  body.replaceChildren(...items.map((item) => row(item, filters, onSelect)));
  if (!items.length) {
    body.append(h("tr.empty", h("td", { colspan: 8 },
      isFiltered(filters) ? "No stored completions match these filters."
        : h("span", "No stored completions yet. Send a chat completion with ", h("code", "store: true"),
          " and it appears here."))));
  }
  shown.textContent = items.length ? `${items.length} shown on this page${page.has_more ? "; more on the next page" : ""}.` : "";
  onSelect();
  if (cursors.length || filters.after) {
    pager.append(h("button.quiet", { type: "button", onclick: () => {
      const previous = cursors.pop() ?? "";
      location.hash = hashFor(filters, { after: previous });
    } }, "Previous page"));
  }
  if (page.has_more) {
    pager.append(h("button", { type: "button", onclick: () => {
      cursors.push(filters.after);
      location.hash = hashFor(filters, { after: page.last_id });
    } }, "Next page"));
  }
  fillFirstMessages(body, page.data.map((item) => item.id));
}

async function deleteSelected(status, filters) {
  const ids = [...selected];
  const ok = await confirmDialog(`Delete ${ids.length} stored completion${ids.length === 1 ? "" : "s"}?`,
    "Their messages, answers and metadata are removed for good.");
  if (!ok) return;
  const failures = [];
  for (const id of ids) {
    try {
      await api(`chat/completions/${encodeURIComponent(id)}`, { method: "DELETE" });
      selected.delete(id);
    } catch (error) {
      if (error.status === 404) selected.delete(id);
      else failures.push([id, error]);
    }
  }
  if (failures.length) {
    status.replaceChildren(errorBox(failures[0][1]),
      h("p", `${failures.length} of ${ids.length} could not be deleted.`));
    return;
  }
  setFlash(`Deleted ${ids.length} stored completion${ids.length === 1 ? "" : "s"}.`);
  const target = hashFor(filters);
  if (location.hash === target) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = target;
}

async function deleteMatching(status, filters) {
  let counted;
  try {
    counted = await api(bulkPath(), { method: "POST", body: { ...filterBody(filters), dry_run: true } });
  } catch (error) {
    status.replaceChildren(errorBox(error));
    return;
  }
  const n = counted.matched;
  const ok = await confirmDialog(`Delete ${formatNumber(n)} stored completion${n === 1 ? "" : "s"}?`,
    `Every completion these filters match (${formatNumber(n)} by a dry run just now, including any stored since) is removed for good, with its messages and metadata.`,
    `Delete ${formatNumber(n)}`);
  if (!ok) return;
  let done;
  try {
    done = await api(bulkPath(), { method: "POST", body: filterBody(filters) });
  } catch (error) {
    status.replaceChildren(errorBox(error));
    return;
  }
  allMatching = null;
  selected.clear();
  setFlash(`Deleted ${formatNumber(done.deleted)} stored completion${done.deleted === 1 ? "" : "s"} matching the filters.`);
  const target = hashFor(filters);
  if (location.hash === target) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = target;
}

// --- the detail view -----------------------------------------------------------------------------

export async function renderCompletionDetail(view, id, params) {
  const back = `#/completions${params.toString() ? `?${params}` : ""}`;
  const title = h("h1", { tabindex: "-1", class: "mono" }, id);
  const status = h("div.status");
  const content = h("div.detail-body", h("p.muted", "Loading…"));
  view.replaceChildren(h("article.detail", { "aria-labelledby": "detail-title" },
    h("a.back", { href: back }, "← Back to the list"), title, status, content));
  title.id = "detail-title";
  let completion;
  let messages;
  try {
    [completion, messages] = await Promise.all([
      api(`chat/completions/${encodeURIComponent(id)}`),
      listAll(`chat/completions/${encodeURIComponent(id)}/messages`),
    ]);
  } catch (error) {
    unauthorized(error);
    content.replaceChildren(errorBox(error));
    return;
  }
  const acts = can("stored-completions/action");
  const remove = h("button.danger", { type: "button" }, "Delete this completion");
  remove.addEventListener("click", async () => {
    if (!(await confirmDialog("Delete this stored completion?", `${id} and its messages are removed for good.`))) return;
    try {
      await api(`chat/completions/${encodeURIComponent(id)}`, { method: "DELETE" });
    } catch (error) {
      status.replaceChildren(errorBox(error));
      return;
    }
    selected.delete(id);
    setFlash(`Deleted ${id}.`);
    location.hash = back;
  });
  content.replaceChildren(
    h("section", { "aria-label": "Summary" }, summaryList(completion)),
    h("section", h("h2", `Messages (${messages.length})`), h("ol.messages", messages.map(renderMessage))),
    h("section", h("h2", "Answer"), (completion.choices || []).map(renderChoice)),
    h("section", h("h2", "Parameters"), parameters(completion)),
    h("section", h("h2", "Metadata"), metadataEditor(completion, acts)),
    acts ? h("section.danger-zone", h("h2", "Delete"), remove) : null,
    h("details.raw", h("summary", "Raw object"), h("pre", JSON.stringify(completion, null, 2))));
  title.focus();
}

function parameters(c) {
  const rows = [
    ["Temperature", c.temperature], ["Top p", c.top_p], ["Seed", c.seed],
    ["Presence penalty", c.presence_penalty], ["Frequency penalty", c.frequency_penalty],
    ["Tool choice", c.tool_choice], ["Response format", c.response_format], ["User", c.input_user],
  ];
  const list = h("dl.params", rows.map(([name, value]) => [h("dt", name),
    h("dd", value === null || value === undefined ? h("span.muted", "—")
      : typeof value === "object" ? h("pre", JSON.stringify(value, null, 2)) : String(value))]));
  if (c.tools?.length) {
    list.append(h("dt", `Tools (${c.tools.length})`), h("dd", h("pre", JSON.stringify(c.tools, null, 2))));
  }
  return list;
}
