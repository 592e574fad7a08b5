// The generate page: submit to the REST API, follow the job over server-sent events.
"use strict";

(() => {
  const form = document.getElementById("generate-form");
  if (!form) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const panel = document.getElementById("job-panel");
  const statusEl = document.getElementById("job-status");
  const bar = document.getElementById("job-progress");
  const detail = document.getElementById("job-detail");
  const errorEl = document.getElementById("job-error");
  const imagesEl = document.getElementById("job-images");
  const cancelBtn = document.getElementById("cancel-btn");
  const submitBtn = document.getElementById("generate-btn");
  const modelSel = document.getElementById("f-model");
  const samplerSel = document.getElementById("f-sampler");
  const TERMINAL = ["completed", "failed", "cancelled"];
  const LABELS = {queued: "Queued", running: "Running", completed: "Done", failed: "Failed", cancelled: "Cancelled"};
  let source = null;
  let jobId = null;

  const api = (method, path, body) =>
    fetch(path, {
      method,
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf},
      body: body === undefined ? undefined : JSON.stringify(body),
    });

  // Model defaults: picking a model fills in its size, steps, guidance and samplers.
  const applyModel = () => {
    const opt = modelSel && modelSel.selectedOptions[0];
    if (!opt) return;
    const set = (name, value) => { const el = form.elements[name]; if (el && value) el.value = value; };
    set("width", opt.dataset.width);
    set("height", opt.dataset.height);
    set("steps", opt.dataset.steps);
    set("guidance", opt.dataset.guidance);
    for (const name of ["width", "height"]) {
      const el = form.elements[name];
      if (opt.dataset.min && opt.dataset.min !== "0") el.min = opt.dataset.min;
      if (opt.dataset.max && opt.dataset.max !== "0") el.max = opt.dataset.max;
    }
    samplerSel.replaceChildren();
    for (const s of (opt.dataset.samplers || "").split(",").filter(Boolean)) {
      const o = new Option(s, s, false, s === opt.dataset.sampler);
      samplerSel.add(o);
    }
  };
  if (modelSel) modelSel.addEventListener("change", applyModel);

  const clearErrors = () => {
    for (const el of form.querySelectorAll("[data-error-for]")) {
      el.textContent = "";
      el.classList.add("hidden");
      const field = el.closest(".field");
      if (field) field.classList.remove("has-error");
    }
  };

  const showError = (field, message) => {
    let el = form.querySelector(`[data-error-for="${CSS.escape(field || "form")}"]`);
    if (!el) el = form.querySelector('[data-error-for="form"]');
    el.textContent = message;
    el.classList.remove("hidden");
    const wrap = el.closest(".field");
    if (wrap) wrap.classList.add("has-error");
    const input = form.elements[field];
    if (input && input.focus) input.focus();
  };

  const body = () => {
    const out = {prompt: form.elements.prompt.value.trim()};
    const text = ["negative_prompt", "model", "sampler"];
    const ints = ["width", "height", "steps", "seed", "n"];
    for (const name of text) {
      const el = form.elements[name];
      if (el && el.value.trim()) out[name] = el.value.trim();
    }
    for (const name of ints) {
      const el = form.elements[name];
      if (el && el.value.trim() !== "") out[name] = Number(el.value);
    }
    const g = form.elements.guidance;
    if (g && g.value.trim() !== "") out.guidance = Number(g.value);
    return out;
  };

  const render = (job) => {
    statusEl.textContent = LABELS[job.status] || job.status;
    const steps = job.progress.steps || 0;
    const step = Math.min(job.progress.step || 0, steps);
    bar.max = steps || 1;
    if (job.status === "completed") {
      bar.value = bar.max;
    } else if (job.status === "queued") {
      bar.removeAttribute("value");  // indeterminate while waiting
    } else {
      bar.value = step;
    }
    if (job.status === "queued") {
      detail.textContent = job.position ? `Waiting in the queue: position ${job.position}.` : "Waiting for a worker…";
    } else if (job.status === "running") {
      detail.textContent = steps ? `Step ${step} / ${steps}` : "Starting…";
    } else if (job.status === "completed") {
      detail.textContent = `${job.images.length} image${job.images.length === 1 ? "" : "s"}${job.cached ? " (from cache)" : ""}.`;
    } else {
      detail.textContent = "";
    }
    if (job.error) {
      errorEl.textContent = job.error.message || job.error.code;
      errorEl.classList.remove("hidden");
    }
    cancelBtn.hidden = TERMINAL.includes(job.status);
    if (job.status === "completed") {
      imagesEl.replaceChildren(
        ...job.images.map((img) => {
          const a = document.createElement("a");
          a.className = "tile";
          a.href = `/images/${encodeURIComponent(img.id)}`;
          const im = document.createElement("img");
          im.src = img.url;
          im.alt = "Generated image";
          a.append(im);
          return a;
        }),
      );
    }
  };

  const finish = () => {
    if (source) { source.close(); source = null; }
    submitBtn.disabled = false;
  };

  const refresh = async () => {
    if (!jobId) return;
    const resp = await api("GET", `/api/v1/jobs/${encodeURIComponent(jobId)}`);
    if (resp.ok) {
      const job = await resp.json();
      render(job);
      if (TERMINAL.includes(job.status)) finish();
    }
  };

  const follow = (id) => {
    source = new EventSource(`/api/v1/jobs/${encodeURIComponent(id)}/events`);
    for (const type of ["queued", "running", "progress", "completed", "failed", "cancelled"]) {
      source.addEventListener(type, (ev) => {
        const job = JSON.parse(ev.data);
        render(job);
        if (TERMINAL.includes(job.status)) finish();
      });
    }
    source.addEventListener("error", (ev) => {
      if (ev.data) {  // an error event from the server, not a dropped connection
        const err = JSON.parse(ev.data);
        errorEl.textContent = err.message;
        errorEl.classList.remove("hidden");
        finish();
      } else if (source && source.readyState === EventSource.CLOSED) {
        finish();
        refresh();
      }
    });
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const data = body();
    if (!data.prompt) { showError("prompt", "Describe the image you want."); return; }
    finish();
    submitBtn.disabled = true;
    let resp;
    try {
      resp = await api("POST", "/api/v1/generations", data);
    } catch (e) {
      showError("form", "Could not reach the studio; check your connection and try again.");
      submitBtn.disabled = false;
      return;
    }
    const payload = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const err = payload.error || {};
      if (resp.status === 401) { window.location = "/login?next=/"; return; }
      showError(err.field, err.message || `The request failed (${resp.status}).`);
      submitBtn.disabled = false;
      return;
    }
    jobId = payload.job.id;
    panel.hidden = false;
    errorEl.classList.add("hidden");
    imagesEl.replaceChildren();
    render(payload.job);
    follow(jobId);
  });

  cancelBtn.addEventListener("click", async () => {
    if (!jobId) return;
    cancelBtn.disabled = true;
    const resp = await api("POST", `/api/v1/jobs/${encodeURIComponent(jobId)}/cancel`);
    cancelBtn.disabled = false;
    if (resp.ok) {
      const payload = await resp.json();
      render(payload.job);
    } else {
      const err = (await resp.json().catch(() => ({}))).error || {};
      errorEl.textContent = err.message || "Could not cancel the job.";
      errorEl.classList.remove("hidden");
    }
  });
})();
