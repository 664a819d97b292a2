// Fine-tuning jobs: the list, and a job's page (status, the live loss curve drawn from its metrics events,
// events, checkpoints, cancel) with a playground that sends one prompt to the student and to its base.

import { api, ApiError, can, download } from "./api.js";
import { badge, confirmDialog, errorBox, field, formatNumber, formatTime, h, loadStyles, poll } from "./dom.js";
import { legend, lineChart } from "./charts.js";

const FINISHED = ["succeeded", "failed", "cancelled"];

export async function renderJobs(view) {
  loadStyles("studio.css");
  const list = h("tbody", h("tr", h("td.loading", { colspan: 5 }, "Loading…")));
  view.replaceChildren(h("section", h("h1", { tabindex: "-1" }, "Fine-tuning jobs"),
    h("div.table-wrap", h("table.plain",
      h("thead", h("tr", ["Job", "Status", "Base model", "Fine-tuned model", "Created"].map((c) => h("th", { scope: "col" }, c)))),
      list))));
  try {
    const jobs = (await api("fine_tuning/jobs", { query: [["limit", "100"]] })).data;
    list.replaceChildren(...jobs.map((job) => h("tr",
      h("td", h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, h("code", job.id))), h("td", badge(job.status)),
      h("td", job.model), h("td", job.fine_tuned_model ? h("code", job.fine_tuned_model) : h("span.muted", "—")),
      h("td", formatTime(job.created_at)))));
    if (!jobs.length) {
      list.append(h("tr.empty", h("td", { colspan: 5 }, "No fine-tuning jobs yet: select stored completions and press Distill.")));
    }
  } catch (error) {
    list.replaceChildren(h("tr", h("td", { colspan: 5 }, errorBox(error))));
  }
}

// Every event of the job, oldest first (the API pages newest first); `known` keeps what earlier polls read.
async function newEvents(jobId, known) {
  const fresh = [];
  let after = null;
  for (;;) {
    const page = await api(`fine_tuning/jobs/${encodeURIComponent(jobId)}/events`, { query: [["limit", "100"], ["after", after]] });
    const unseen = page.data.filter((e) => !known.has(e.id));
    fresh.push(...unseen);
    if (!page.has_more || unseen.length < page.data.length || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
  for (const event of fresh) known.set(event.id, event);
  return [...known.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
}

function lossChart(events, checkpoints) {
  const metrics = events.filter((e) => e.type === "metrics" && e.data && typeof e.data.train_loss === "number");
  if (!metrics.length) return h("p.muted.chart-empty", "The loss curve appears with the first training step.");
  const train = metrics.map((e) => [e.data.step, e.data.train_loss]);
  const valid = checkpoints.filter((c) => typeof c.metrics?.valid_loss === "number")
    .map((c) => [c.step_number, c.metrics.valid_loss]).sort((a, b) => a[0] - b[0]);
  const total = metrics[metrics.length - 1].data.total_steps;
  const series = [{ name: "training loss", points: train }];
  if (valid.length) series.push({ name: "validation loss", points: valid });
  const last = metrics[metrics.length - 1].data;
  return h("figure.chart-box",
    lineChart(series, { title: "Loss by step", xMax: total }),
    legend(series.map((s) => s.name)),
    h("figcaption.muted", `Step ${last.step} of ${last.total_steps ?? "?"}, epoch ${last.epoch ?? "?"}: training loss ${last.train_loss.toFixed(4)}`,
      typeof last.eta_seconds === "number" && last.step < last.total_steps ? `, about ${Math.ceil(last.eta_seconds)} s left.` : "."));
}

function summary(job) {
  const hp = job.hyperparameters || {};
  return h("dl.summary",
    h("dt", "Status"), h("dd", { id: "job-status" }, badge(job.status)),
    h("dt", "Base model"), h("dd", h("code", job.model)),
    h("dt", "Fine-tuned model"), h("dd", job.fine_tuned_model ? h("code", job.fine_tuned_model) : h("span.muted", "not yet")),
    h("dt", "Created"), h("dd", formatTime(job.created_at)),
    h("dt", "Finished"), h("dd", formatTime(job.finished_at)),
    h("dt", "Trained tokens"), h("dd", formatNumber(job.trained_tokens)),
    h("dt", "Hyperparameters"), h("dd", Object.entries(hp).map(([k, v]) => `${k} ${v}`).join(", ") || "—"),
    h("dt", "Training file"), h("dd", h("code", job.training_file)),
    h("dt", "Validation file"), h("dd", job.validation_file ? h("code", job.validation_file) : "—"),
    job.error?.message ? [h("dt", "Error"), h("dd", errorBox({ title: job.error.code || "Error", message: job.error.message }))] : null);
}

function eventList(events) {
  return h("ol.events", { reversed: true }, [...events].reverse().slice(0, 200).map((e) => h("li", { dataset: { type: e.type, level: e.level } },
    h("time", formatTime(e.created_at)), " ", h("span.badge", e.type), " ", e.message)));
}

// A checkpoint's adapter (Stillroom's `result_files` on the checkpoint), or a dash once it was deleted.
function adapterCell(checkpoint) {
  const fileId = checkpoint.result_files?.[0];
  if (!fileId) return h("td", "—");
  const name = `${checkpoint.fine_tuning_job_id}-ckpt-step-${checkpoint.step_number}-adapter.zip`;
  return h("td", h("button.quiet", { type: "button", onclick: () => download(`files/${encodeURIComponent(fileId)}/content`, [], name) },
    "Download adapter"));
}

function checkpointTable(checkpoints) {
  if (!checkpoints.length) return h("p.muted", "No checkpoints yet (one per epoch, and at the last step).");
  return h("div.table-wrap", h("table.plain.checkpoints",
    h("thead", h("tr", ["Step", "Checkpoint model", "Training loss", "Validation loss", "Adapter"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", checkpoints.map((c) => h("tr",
      h("td", c.step_number), h("td", h("code", c.fine_tuned_model_checkpoint)),
      h("td", c.metrics?.train_loss?.toFixed?.(4) ?? "—"), h("td", c.metrics?.valid_loss?.toFixed?.(4) ?? "—"),
      adapterCell(c))))));
}

export async function renderJob(view, jobId) {
  loadStyles("studio.css");
  const title = h("h1", { tabindex: "-1", class: "mono", id: "job-title" }, jobId);
  const status = h("div.status");
  const head = h("div", h("p.muted", "Loading…"));
  const chart = h("div.chart-slot");
  const events = h("div");
  const checkpoints = h("div");
  const actions = h("div.actions");
  const playground = h("div");
  const page = h("article.job", { "aria-labelledby": "job-title" },
    h("a.back", { href: "#/jobs" }, "← Fine-tuning jobs"), title, status, actions, head,
    h("section", { "aria-label": "Loss curve" }, h("h2", "Loss"), chart),
    playground,
    h("section", h("h2", "Checkpoints"), checkpoints),
    h("section", h("h2", "Events"), events));
  view.replaceChildren(page);
  const known = new Map();
  let shownState = null;
  await poll(page, async () => {
    let job;
    let all;
    let points;
    try {
      [job, all, points] = await Promise.all([
        api(`fine_tuning/jobs/${encodeURIComponent(jobId)}`),
        newEvents(jobId, known),
        api(`fine_tuning/jobs/${encodeURIComponent(jobId)}/checkpoints`, { query: [["limit", "100"]] }),
      ]);
    } catch (error) {
      status.replaceChildren(errorBox(error));
      return !(error instanceof ApiError && [401, 403, 404].includes(error.status));
    }
    status.replaceChildren();
    head.replaceChildren(summary(job));
    chart.replaceChildren(lossChart(all, points.data));
    events.replaceChildren(eventList(all));
    checkpoints.replaceChildren(checkpointTable([...points.data].sort((a, b) => a.step_number - b.step_number)));
    const finished = FINISHED.includes(job.status);
    if (shownState !== job.status) {
      shownState = job.status;
      actions.replaceChildren(...(!finished && can("stored-completions/action")
        ? [h("button.danger", { type: "button", onclick: () => cancel(job, status) }, "Cancel job")] : []));
      playground.replaceChildren(...(job.status === "succeeded" && job.fine_tuned_model && can("inference")
        ? [renderPlayground(job.model, job.fine_tuned_model)] : []));
    }
    return !finished;
  });
}

async function cancel(job, status) {
  if (!(await confirmDialog("Cancel this job?", "Training stops within a few seconds; nothing is kept.", "Cancel job"))) return;
  try {
    await api(`fine_tuning/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST", body: {} });
  } catch (error) {
    status.replaceChildren(errorBox(error));
  }
}

// Two columns, one prompt: the base model and the student answer the same messages.
export function renderPlayground(base, student) {
  const system = h("input", { type: "text", name: "system", placeholder: "(none)" });
  const prompt = h("textarea", { name: "prompt", rows: 3, required: true });
  const maxTokens = h("input", { type: "number", name: "max_tokens", min: "1", max: "2048", value: "64" });
  const columns = [base, student].map((model) => ({ model, out: h("div.answer-text", { "aria-live": "polite" }, h("span.muted", "—")) }));
  const send = h("button", { type: "submit" }, "Send to both");
  const form = h("form.card.playground", { "aria-labelledby": "playground-title" },
    h("h2", { id: "playground-title" }, "Playground"),
    h("p.muted", "The same prompt goes to the base model and to the student (temperature 0); nothing is stored."),
    field("System prompt", system), field("Prompt", prompt), field("Max tokens", maxTokens),
    h("div.actions", send),
    h("div.columns", columns.map(({ model, out }, i) => h("section.column", { "aria-label": i ? "Student" : "Base model" },
      h("h3", i ? "Student" : "Base", " ", h("code", model)), out))));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    messages.push({ role: "user", content: prompt.value });
    send.disabled = true;
    await Promise.all(columns.map(async ({ model, out }) => {
      out.replaceChildren(h("span.muted", "Answering…"));
      const started = performance.now();
      try {
        const answer = await api("chat/completions", {
          method: "POST",
          body: { model, messages, max_tokens: Number(maxTokens.value) || 64, temperature: 0, store: false },
        });
        const text = answer.choices?.[0]?.message?.content ?? "";
        out.replaceChildren(h("div.text", text || h("span.muted", "(empty answer)")),
          h("p.muted", `${formatNumber(answer.usage?.completion_tokens)} tokens in ${Math.round(performance.now() - started).toLocaleString()} ms; finish ${answer.choices?.[0]?.finish_reason}`));
      } catch (error) {
        out.replaceChildren(errorBox(error));
      }
    }));
    send.disabled = false;
  });
  return form;
}
