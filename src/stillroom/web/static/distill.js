// The Distill wizard: the selection -> a dataset (POST /v1/fine_tuning/datasets) -> a fine-tuning job
// (POST /v1/fine_tuning/jobs). Step 1 picks the base model and the dataset options, step 2 reviews what was
// built (counts, what was dropped and why, a sample, downloads) and starts the job, whose page follows.

import { api, download, fetchRaw } from "./api.js";
import { errorBox, field, formatNumber, h, loadStyles } from "./dom.js";
import { describeSelection, distillSelection, selectionFrom } from "./selection.js";

export const DEFAULT_BASE = "smollm2-135m-instruct";
const DROP_REASONS = {
  incomplete: "incomplete (the stream broke off)",
  truncated: "truncated (finish_reason 'length')",
  no_answer: "without an answer (no content or tool calls)",
  duplicate: "duplicates",
};

// Base models: what the server routes to its own (local) provider, never a fine-tuned model.
export async function baseModels() {
  const cards = (await api("models")).data;
  return cards.filter((c) => c.owned_by === "local" && !c.id.startsWith("ft:")).map((c) => c.id);
}

function checkbox(name, label, checked = true) {
  const box = h("input", { type: "checkbox", name, checked });
  return [box, h("div.field.switch", h("label", box, ` ${label}`))];
}

export async function renderDistill(view, params) {
  loadStyles("studio.css");
  const selection = selectionFrom(params);
  const title = h("h1", { tabindex: "-1", id: "distill-title" }, "Distill");
  const status = h("div.status");
  const body = h("div.wizard-body", h("p.muted", "Loading…"));
  view.replaceChildren(h("section.wizard", { "aria-labelledby": "distill-title" },
    h("a.back", { href: "#/completions" }, "← Stored completions"), title,
    h("ol.steps", h("li", { "aria-current": "step" }, "Options"), h("li", "Review"), h("li", "Train")),
    describeSelection(selection), status, body));
  let models;
  try {
    models = await baseModels();
  } catch (error) {
    body.replaceChildren(errorBox(error));
    return;
  }
  const preferred = models.includes(DEFAULT_BASE) ? DEFAULT_BASE : models[0];
  const base = h("select", { name: "base" }, models.map((m) => h("option", { value: m, selected: m === preferred }, m)));
  const split = h("input", { type: "number", name: "validation_split", min: "0", max: "0.5", step: "0.05", value: "0" });
  const [truncated, truncatedField] = checkbox("drop_truncated", "Drop truncated answers (finish_reason 'length')");
  const [incomplete, incompleteField] = checkbox("drop_incomplete", "Drop incomplete answers (the stream broke off)");
  const [dedupe, dedupeField] = checkbox("dedupe", "Drop duplicate examples");
  const [lastTurn, lastTurnField] = checkbox("last_turn", "Keep only the last exchange (drop few-shot example turns)", false);
  const system = h("select", { name: "system_prompt" },
    h("option", { value: "keep" }, "Keep it"), h("option", { value: "strip" }, "Strip it"),
    h("option", { value: "replace" }, "Replace it"));
  const replacement = h("textarea", { name: "replacement", rows: 2 });
  const replaceField = field("New system prompt", replacement);
  replaceField.hidden = true;
  system.addEventListener("change", () => { replaceField.hidden = system.value !== "replace"; });
  const build = h("button", { type: "submit" }, "Build dataset");
  const form = h("form.card.wizard-step", { "aria-label": "Dataset options" },
    h("h2", "1. Base model and dataset"),
    models.length ? field("Base model", base, "The student starts from this model; only models the server runs itself can be fine-tuned.")
      : h("p.error", "This server has no local model to fine-tune."),
    field("Validation split", split, "0 to 0.5 of the examples, by a hash of the prompt (one prompt never lands on both sides)."),
    truncatedField, incompleteField, dedupeField, lastTurnField,
    field("System prompt", system, "Strip or replace it to distil the prompt into the student."),
    replaceField,
    h("div.actions", build));
  const reviewSlot = h("div");
  body.replaceChildren(form, reviewSlot);
  title.focus();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren();
    const request = {
      ...distillSelection(selection),
      validation_split: Number(split.value || 0),
      drop_truncated: truncated.checked,
      drop_incomplete: incomplete.checked,
      dedupe: dedupe.checked,
      last_turn: lastTurn.checked,
      system_prompt: system.value === "replace" ? { replace: replacement.value } : system.value,
    };
    build.disabled = true;
    try {
      const dataset = await api("fine_tuning/datasets", { method: "POST", body: request });
      view.querySelectorAll(".steps li").forEach((li, i) => li.toggleAttribute("aria-current", i === 1));
      reviewSlot.replaceChildren(await review(dataset, base.value));
      reviewSlot.querySelector("h2")?.focus();
    } catch (error) {
      status.replaceChildren(errorBox(error));
    } finally {
      build.disabled = false;
    }
  });
}

async function sampleLines(fileId, n = 3) {
  const response = await fetchRaw(`files/${encodeURIComponent(fileId)}/content`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  while (text.split("\n").length <= n) {
    const { done, value } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
  }
  reader.cancel().catch(() => {});
  return text.split("\n").filter(Boolean).slice(0, n).map((line) => JSON.parse(line));
}

function fileLinks(file, label) {
  if (!file) return null;
  const name = file.filename.replace(/\.jsonl$/, "");
  return h("li", `${label}: `, h("code", file.id), ` (${formatNumber(file.bytes)} bytes) `,
    h("button.quiet", { type: "button", onclick: () => download(`files/${encodeURIComponent(file.id)}/content`, [], file.filename) }, `Download ${label} JSONL`),
    " ",
    h("button.quiet", { type: "button", onclick: () => download(`files/${encodeURIComponent(file.id)}/content`, [["format", "parquet"]], `${name}.parquet`) }, `Download ${label} Parquet`));
}

async function review(dataset, baseModel) {
  const counts = dataset.counts;
  const dropped = Object.entries(counts.dropped).filter(([, n]) => n);
  let sample = [];
  let sampleError = null;
  try {
    sample = await sampleLines(dataset.training_file.id);
  } catch (error) {
    sampleError = error;
  }
  const suffix = h("input", { type: "text", name: "suffix", maxlength: "64", value: "distilled" });
  const epochs = h("input", { type: "text", name: "n_epochs", value: "auto", inputmode: "numeric" });
  const batch = h("input", { type: "text", name: "batch_size", value: "auto", inputmode: "numeric" });
  const status = h("div.status");
  const start = h("button", { type: "submit" }, "Start fine-tuning");
  const form = h("form.card.wizard-step.review", { "aria-label": "Review the dataset" },
    h("h2", { tabindex: "-1" }, "2. Review"),
    h("dl.summary.counts",
      h("dt", "Selected"), h("dd", { dataset: { count: "selected" } }, formatNumber(counts.selected)),
      h("dt", "Training examples"), h("dd", { dataset: { count: "training" } }, formatNumber(counts.training)),
      h("dt", "Validation examples"), h("dd", { dataset: { count: "validation" } }, formatNumber(counts.validation)),
      h("dt", "Dropped"), h("dd", { dataset: { count: "dropped" } }, dropped.length
        ? h("ul.dropped", dropped.map(([reason, n]) => h("li", { dataset: { reason } }, `${formatNumber(n)} ${DROP_REASONS[reason] || reason}`)))
        : "nothing")),
    h("h3", "Files"),
    h("ul.files", fileLinks(dataset.training_file, "training"), fileLinks(dataset.validation_file, "validation")),
    h("h3", `Sample (the first ${sample.length} training examples)`),
    sampleError ? errorBox(sampleError) : h("ol.sample", sample.map((example) => h("li",
      h("ul.turns", example.messages.map((m) => h("li", { dataset: { role: m.role } }, h("span.role", m.role), " ",
        typeof m.content === "string" ? m.content : JSON.stringify(m.content ?? m.tool_calls))))))),
    h("h3", "Training"),
    h("p", "Base model ", h("code", baseModel), "."),
    h("div.inline-fields", field("Suffix", suffix, "Part of the student's name: ft:<base>:<project>:<suffix>:<job>"),
      field("Epochs", epochs), field("Batch size", batch)),
    status,
    h("div.actions", start));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren();
    const number = (input) => (input.value.trim() === "" || input.value.trim() === "auto" ? "auto" : Number(input.value));
    const body = {
      model: baseModel,
      training_file: dataset.training_file.id,
      suffix: suffix.value.trim() || undefined,
      method: { type: "supervised", supervised: { hyperparameters: { n_epochs: number(epochs), batch_size: number(batch) } } },
    };
    if (dataset.validation_file) body.validation_file = dataset.validation_file.id;
    start.disabled = true;
    try {
      const job = await api("fine_tuning/jobs", { method: "POST", body });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      status.replaceChildren(errorBox(error));
      start.disabled = false;
    }
  });
  return form;
}
