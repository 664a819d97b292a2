// The Evaluate wizard: graders (each can be tried on the first selected completion through
// /v1/fine_tuning/alpha/graders/run), the subjects to compare (the stored answers, and any model the server
// routes, fine-tuned students included), then one eval with one run per subject. The run page follows.

import { api } from "./api.js";
import { errorBox, field, h, loadStyles } from "./dom.js";
import { describeSelection, evalSource, firstItem, selectionFrom } from "./selection.js";

const METRICS = ["fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l", "cosine"];
const TYPES = {
  string_check: "String check",
  text_similarity: "Text similarity",
  label_model: "Label model (judge)",
  score_model: "Score model (judge)",
  python: "Python",
};
const PYTHON = 'def grade(sample, item) -> float:\n    """1.0 when the answer is not empty."""\n    return 1.0 if sample["output_text"].strip() else 0.0\n';
const JUDGE_PROMPT = "Question: {{item.user_text}}\nReference answer: {{item.output_text}}\nAnswer to grade: {{sample.output_text}}";

function input(name, value, attrs = {}) {
  return h("input", { type: "text", name, value, ...attrs });
}

function select(name, options, value) {
  return h("select", { name }, options.map((o) => h("option", { value: o, selected: o === value }, o)));
}

// One grader's form; `read()` gives the grader object the API takes.
function graderEditor(type, models, n, onRemove) {
  const name = input("name", `${type.replace(/_model$/, "")}-${n}`, { "aria-label": "Grader name" });
  const parts = [field("Name", name)];
  let read;
  if (type === "string_check" || type === "text_similarity") {
    const text = input("input", "{{sample.output_text}}");
    const reference = input("reference", "{{item.output_text}}");
    parts.push(field("Input", text, "A template: {{sample.output_text}} is the subject's answer."),
      field("Reference", reference, "{{item.output_text}} is the stored answer; {{item.user_text}} the last user message."));
    if (type === "string_check") {
      const operation = select("operation", ["eq", "ne", "like", "ilike"], "ilike");
      parts.push(field("Operation", operation, "eq / ne: exactly (un)equal; like: contains; ilike: contains, any case."));
      read = () => ({ type, name: name.value, input: text.value, reference: reference.value, operation: operation.value });
    } else {
      const metric = select("evaluation_metric", METRICS, "fuzzy_match");
      const threshold = h("input", { type: "number", name: "pass_threshold", min: "0", max: "1", step: "0.05", value: "0.5" });
      parts.push(field("Metric", metric), field("Pass threshold", threshold));
      read = () => ({ type, name: name.value, input: text.value, reference: reference.value, evaluation_metric: metric.value, pass_threshold: Number(threshold.value) });
    }
  } else if (type === "label_model" || type === "score_model") {
    const model = select("model", models, models[0]);
    const prompt = h("textarea", { name: "prompt", rows: 3 }, JUDGE_PROMPT);
    parts.push(field("Judge model", model), field("Prompt", prompt));
    if (type === "label_model") {
      const labels = input("labels", "correct, incorrect");
      const passing = input("passing_labels", "correct");
      parts.push(field("Labels", labels, "Comma-separated."), field("Passing labels", passing));
      const split = (el) => el.value.split(",").map((s) => s.trim()).filter(Boolean);
      read = () => ({ type, name: name.value, model: model.value, input: [{ role: "user", content: prompt.value }], labels: split(labels), passing_labels: split(passing) });
    } else {
      const threshold = h("input", { type: "number", name: "pass_threshold", step: "0.05", value: "0.5" });
      parts.push(field("Pass threshold", threshold, "Scores range from 0 to 1."));
      read = () => ({ type, name: name.value, model: model.value, input: [{ role: "user", content: prompt.value }], range: [0, 1], pass_threshold: Number(threshold.value) });
    }
  } else {
    const source = h("textarea.mono", { name: "source", rows: 5, spellcheck: "false" }, PYTHON);
    const threshold = h("input", { type: "number", name: "pass_threshold", step: "0.05", value: "1" });
    parts.push(field("Source", source, "grade(sample, item) -> float, run in a sandbox."), field("Pass threshold", threshold));
    read = () => ({ type, name: name.value, source: source.value, pass_threshold: Number(threshold.value) });
  }
  const result = h("div.try-result", { "aria-live": "polite" });
  const box = h("fieldset.card.grader", { dataset: { type } },
    h("legend", TYPES[type]), parts,
    h("div.actions",
      h("button.quiet", { type: "button", dataset: { action: "try" } }, "Try on one sample"),
      h("button.quiet", { type: "button", onclick: () => { box.remove(); onRemove(); } }, "Remove grader")),
    result);
  box.read = read;
  box.result = result;
  return box;
}

async function tryGrader(box, sample) {
  box.result.replaceChildren(h("span.muted", "Grading…"));
  try {
    const item = await sample();
    if (!item) throw new Error("No stored completion matches the selection.");
    const answer = await api("fine_tuning/alpha/graders/run", { method: "POST", body: { grader: box.read(), item, model_sample: item.output_text } });
    const errors = Object.entries(answer.metadata?.errors || {}).filter(([k, v]) => v && !k.endsWith("_details") && !k.endsWith("_type"));
    const details = answer.metadata?.errors?.python_grader_runtime_error_details || answer.metadata?.errors?.model_grader_server_error_details;
    box.result.replaceChildren(h("p.notice", { role: "status" },
      `Reward ${Number(answer.reward).toLocaleString(undefined, { maximumFractionDigits: 4 })} on the stored answer of `, h("code", item.id),
      errors.length ? ` (errors: ${errors.map(([k]) => k).join(", ")}${details ? `: ${details}` : ""})` : "."));
  } catch (error) {
    box.result.replaceChildren(errorBox(error));
  }
}

export async function renderEvaluate(view, params) {
  loadStyles("studio.css");
  const selection = selectionFrom(params);
  const title = h("h1", { tabindex: "-1", id: "evaluate-title" }, "Evaluate");
  const status = h("div.status");
  const body = h("div.wizard-body", h("p.muted", "Loading…"));
  view.replaceChildren(h("section.wizard", { "aria-labelledby": "evaluate-title" },
    h("a.back", { href: "#/completions" }, "← Stored completions"), title, describeSelection(selection), status, body));
  let models;
  try {
    models = (await api("models")).data.map((m) => m.id);
  } catch (error) {
    body.replaceChildren(errorBox(error));
    return;
  }
  let cached = null;
  const sample = () => (cached ||= firstItem(selection));
  const graders = h("div.graders");
  let count = 0;
  const add = (type) => {
    count += 1;
    const box = graderEditor(type, models, count, () => {});
    box.querySelector('[data-action="try"]').addEventListener("click", () => tryGrader(box, sample));
    graders.append(box);
    return box;
  };
  add("text_similarity");
  const kind = h("select", { name: "grader_type", "aria-label": "Grader type" },
    Object.entries(TYPES).map(([value, label]) => h("option", { value }, label)));
  const addButton = h("button.quiet", { type: "button", onclick: () => add(kind.value).querySelector("input")?.focus() }, "Add grader");

  const stored = h("input", { type: "checkbox", name: "subject", value: "", checked: true });
  const subjects = [h("li", h("label", stored, " The stored answers"))];
  const modelBoxes = models.map((m) => {
    const box = h("input", { type: "checkbox", name: "subject", value: m });
    subjects.push(h("li", h("label", box, " ", h("code", m), m.startsWith("ft:") ? h("span.badge", "student") : null)));
    return box;
  });
  const inputs = h("select", { name: "inputs" },
    h("option", { value: "full" }, "The whole stored conversation"), h("option", { value: "last-user" }, "Only the last user message"));
  const maxTokens = h("input", { type: "number", name: "max_completion_tokens", min: "1", max: "4096", value: "64" });
  const name = h("input", { type: "text", name: "eval_name", value: `evaluate ${new Date().toLocaleString()}` });
  const start = h("button", { type: "submit" }, "Start evaluation");
  const form = h("form.wizard-step", { "aria-label": "Evaluation" },
    h("section.card", h("h2", "1. Graders"), h("p.muted", "An item passes when every grader passes it."),
      graders, h("div.actions", kind, addButton)),
    h("section.card", h("h2", "2. Subjects"), h("p.muted", "Each subject answers the same items; the first is the baseline the others are tested against."),
      h("ul.subjects", { role: "group", "aria-label": "Subjects" }, subjects),
      field("Models see", inputs), field("Max tokens per answer", maxTokens)),
    h("section.card", h("h2", "3. Run"), field("Eval name", name), status, h("div.actions", start)));
  body.replaceChildren(form);
  title.focus();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren();
    const chosen = [...(stored.checked ? [null] : []), ...modelBoxes.filter((b) => b.checked).map((b) => b.value)];
    const criteria = [...graders.children].map((box) => box.read());
    if (!criteria.length || !chosen.length) {
      status.append(errorBox({ title: "Choose", message: "Pick at least one grader and one subject." }));
      return;
    }
    start.disabled = true;
    try {
      const source = evalSource(selection);
      const ev = await api("evals", { method: "POST", body: {
        name: name.value,
        data_source_config: { type: "stored_completions", metadata: selection.metadata },
        testing_criteria: criteria,
      } });
      const messages = inputs.value === "full" ? { type: "item_reference", item_reference: "item.input" }
        : { type: "template", template: [{ role: "user", content: "{{item.user_text}}" }] };
      const runs = [];
      for (const model of chosen) {
        const dataSource = model === null ? { type: "completions", source }
          : { type: "completions", source, model, input_messages: messages,
            sampling_params: { temperature: 0, seed: 42, max_completion_tokens: Number(maxTokens.value) || 64 } };
        runs.push(await api(`evals/${encodeURIComponent(ev.id)}/runs`, { method: "POST", body: { name: model ?? "stored answers", data_source: dataSource } }));
      }
      location.hash = `#/evals/${encodeURIComponent(ev.id)}/runs/${encodeURIComponent(runs[0].id)}`;
    } catch (error) {
      status.replaceChildren(errorBox(error));
      start.disabled = false;
    }
  });
}
