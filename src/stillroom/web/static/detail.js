// The parts of a stored completion's detail view: its summary, each message, each answer, and the metadata
// editor (which saves through POST /v1/chat/completions/{id}).

import { api } from "./api.js";
import { errorBox, formatLatency, formatNumber, formatTime, h } from "./dom.js";

const MAX_PAIRS = 16;

function value(v) {
  return v === null || v === undefined || v === "" ? h("span.muted", "—") : String(v);
}

export function summaryList(c) {
  const ext = c.stillroom || {};
  const usage = c.usage || {};
  const finish = (c.choices || []).map((choice) => choice.finish_reason).filter(Boolean).join(", ");
  const rows = [
    ["Created", h("time", { datetime: new Date((c.created || 0) * 1000).toISOString() }, formatTime(c.created))],
    ["Model", c.model],
    ["Provider", ext.provider],
    ["Latency", formatLatency(ext.latency_ms)],
    ["Tokens", usage.total_tokens === undefined ? null
      : `${formatNumber(usage.prompt_tokens)} prompt + ${formatNumber(usage.completion_tokens)} completion = ${formatNumber(usage.total_tokens)}`],
    ["Finish reason", finish],
    ["Streamed", ext.stream === undefined ? null : ext.stream ? "yes" : "no"],
    ["Complete", ext.incomplete ? h("span.badge.warn", "incomplete: the stream broke off") : "yes"],
    ["Request id", c.request_id ? h("code", c.request_id) : null],
    ["System fingerprint", c.system_fingerprint],
    ["Service tier", c.service_tier],
  ];
  return h("dl.summary", rows.map(([name, v]) => [h("dt", name), h("dd", v instanceof Node ? v : value(v))]));
}

function toolCalls(calls) {
  if (!calls?.length) return null;
  return h("div.tool-calls", h("h4", `Tool calls (${calls.length})`), calls.map((call) => h("div.tool-call",
    h("div", h("code", call.function?.name || call.type || "call"), call.id ? h("span.muted", ` ${call.id}`) : null),
    h("pre", prettyArguments(call.function?.arguments)))));
}

function prettyArguments(text) {
  if (typeof text !== "string") return JSON.stringify(text ?? null, null, 2);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function partsNote(parts) {
  const other = (parts || []).filter((p) => p?.type !== "text");
  if (!other.length) return null;
  return h("p.muted", `Also ${other.length} non-text part${other.length === 1 ? "" : "s"}: ${other.map((p) => p.type).join(", ")}.`);
}

export function renderMessage(m) {
  return h("li.message", { dataset: { role: m.role || "" } },
    h("div.message-head", h("span.role", m.role || "?"), m.name ? h("span.muted", ` ${m.name}`) : null,
      m.tool_call_id ? h("span.muted", ` answers ${m.tool_call_id}`) : null),
    m.content !== null && m.content !== undefined ? h("div.text", m.content) : null,
    m.refusal ? h("div.text.refusal", m.refusal) : null,
    partsNote(m.content_parts),
    toolCalls(m.tool_calls));
}

export function renderChoice(choice, index, all) {
  const message = choice.message || {};
  return h("div.answer",
    all.length > 1 ? h("h3", `Choice ${choice.index ?? index}`) : null,
    message.content !== null && message.content !== undefined ? h("div.text", message.content)
      : message.tool_calls?.length ? null : h("p.muted", "No text content."),
    message.refusal ? h("div.text.refusal", h("strong", "Refusal: "), message.refusal) : null,
    toolCalls(message.tool_calls),
    h("p.muted", `Finish reason: ${choice.finish_reason || "none (incomplete)"}`));
}

function pairRow(key, val) {
  const row = h("div.pair",
    h("input", { type: "text", name: "key", value: key, "aria-label": "Key", maxlength: "64", placeholder: "key" }),
    h("span.eq", { "aria-hidden": "true" }, "="),
    h("input", { type: "text", name: "value", value: val, "aria-label": "Value", maxlength: "512", placeholder: "value" }),
    h("button.quiet.icon", { type: "button", "aria-label": `Remove ${key || "this pair"}`, onclick: () => row.remove() }, "×"));
  return row;
}

// The update endpoint merges pairs into what is stored (null clears everything), so removing a key takes
// two writes: clear, then set what is left. Adding and changing pairs is one write. A principal that may
// not change completions sees the pairs, read-only.
export function metadataEditor(completion, editable = true) {
  let current = { ...(completion.metadata || {}) };
  if (!editable) {
    const pairs = Object.entries(current);
    return pairs.length ? h("dl.summary.metadata", pairs.map(([k, v]) => [h("dt", k), h("dd", v)])) : h("p.muted", "No metadata.");
  }
  const rows = h("div.pairs", Object.entries(current).map(([k, v]) => pairRow(k, v)));
  const note = h("div", { role: "status" });
  const form = h("form.metadata-editor", { "aria-label": "Edit metadata" },
    rows,
    h("div.actions",
      h("button.quiet", { type: "button", onclick: () => {
        const row = pairRow("", "");
        rows.append(row);
        row.querySelector("input").focus();
      } }, "Add pair"),
      h("button", { type: "submit" }, "Save metadata")),
    note);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    note.replaceChildren();
    const wanted = {};
    for (const row of rows.children) {
      const [k, v] = row.querySelectorAll("input");
      const key = k.value.trim();
      if (!key) continue;
      if (key in wanted) {
        note.append(errorBox({ title: "Check the pairs", message: `The key '${key}' appears twice.` }));
        return;
      }
      wanted[key] = v.value;
    }
    if (Object.keys(wanted).length > MAX_PAIRS) {
      note.append(errorBox({ title: "Check the pairs", message: `At most ${MAX_PAIRS} pairs are allowed.` }));
      return;
    }
    const path = `chat/completions/${encodeURIComponent(completion.id)}`;
    const removed = Object.keys(current).some((k) => !(k in wanted));
    try {
      let updated;
      if (removed) updated = await api(path, { method: "POST", body: { metadata: null } });
      if (!removed || Object.keys(wanted).length) updated = await api(path, { method: "POST", body: { metadata: wanted } });
      current = { ...(updated.metadata || {}) };
      rows.replaceChildren(...Object.entries(current).map(([k, v]) => pairRow(k, v)));
      note.append(h("p.notice", "Metadata saved."));
    } catch (error) {
      note.append(errorBox(error));
    }
  });
  return form;
}
