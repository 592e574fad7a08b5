// Shared by the generate and edit pages: JSON calls with the CSRF token, field errors, and the job
// panel that follows a job over server-sent events (progress bar, step counter, results).
"use strict";

window.Easel = window.Easel || {};

(() => {
  const Easel = window.Easel;
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const TERMINAL = ["completed", "failed", "cancelled"];
  const LABELS = {queued: "Queued", running: "Running", completed: "Done", failed: "Failed", cancelled: "Cancelled"};

  Easel.csrf = csrf;
  Easel.TERMINAL = TERMINAL;

  // A JSON request (or a FormData one: the browser then sets the multipart boundary itself).
  Easel.api = (method, path, body) => {
    const headers = {"Accept": "application/json", "X-CSRF-Token": csrf};
    let payload;
    if (body instanceof FormData) {
      payload = body;
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    return fetch(path, {method, credentials: "same-origin", headers, body: payload});
  };

  Easel.clearErrors = (form) => {
    for (const el of form.querySelectorAll("[data-error-for]")) {
      el.textContent = "";
      el.classList.add("hidden");
      const field = el.closest(".field");
      if (field) field.classList.remove("has-error");
    }
  };

  // The message goes next to the field it concerns; unknown fields get the form-wide alert.
  Easel.showError = (form, field, message) => {
    let el = field ? form.querySelector(`[data-error-for="${CSS.escape(field)}"]`) : null;
    if (!el) el = form.querySelector('[data-error-for="form"]');
    el.textContent = message;
    el.classList.remove("hidden");
    const wrap = el.closest(".field");
    if (wrap) wrap.classList.add("has-error");
    const input = field ? form.elements[field] : null;
    if (input && input.focus) input.focus();
  };

  // Submits `body` to `path`; on 202 starts following the job, otherwise shows the error.
  Easel.submitJob = async (form, button, path, body, panel) => {
    Easel.clearErrors(form);
    panel.stop();
    button.disabled = true;
    let resp;
    try {
      resp = await Easel.api("POST", path, body);
    } catch (e) {
      Easel.showError(form, "form", "Could not reach the studio; check your connection and try again.");
      button.disabled = false;
      return;
    }
    const payload = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const err = payload.error || {};
      if (resp.status === 401) {
        window.location = `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
        return;
      }
      Easel.showError(form, err.field, err.message || `The request failed (${resp.status}).`);
      button.disabled = false;
      return;
    }
    panel.onEnd = () => { button.disabled = false; };
    panel.start(payload.job);
  };

  class JobPanel {
    constructor() {
      this.root = document.getElementById("job-panel");
      this.statusEl = document.getElementById("job-status");
      this.bar = document.getElementById("job-progress");
      this.detail = document.getElementById("job-detail");
      this.errorEl = document.getElementById("job-error");
      this.imagesEl = document.getElementById("job-images");
      this.cancelBtn = document.getElementById("cancel-btn");
      this.source = null;
      this.jobId = null;
      this.onEnd = null;
      this.cancelBtn.addEventListener("click", () => this.cancel());
    }

    start(job) {
      this.jobId = job.id;
      this.root.hidden = false;
      this.errorEl.classList.add("hidden");
      this.imagesEl.replaceChildren();
      this.render(job);
      if (TERMINAL.includes(job.status)) {
        this.end();
      } else {
        this.follow(job.id);
      }
      this.root.scrollIntoView({behavior: "smooth", block: "nearest"});
    }

    showError(message) {
      this.errorEl.textContent = message;
      this.errorEl.classList.remove("hidden");
    }

    render(job) {
      this.statusEl.textContent = LABELS[job.status] || job.status;
      this.root.dataset.status = job.status;
      const steps = job.progress.steps || 0;
      const step = Math.min(job.progress.step || 0, steps);
      const bar = this.bar;
      bar.max = steps || 1;
      if (job.status === "completed") {
        bar.value = bar.max;
      } else if (job.status === "queued") {
        bar.removeAttribute("value");  // indeterminate while waiting
      } else {
        bar.value = step;
      }
      const detail = this.detail;
      if (job.status === "queued") {
        detail.textContent = job.position ? `Waiting in the queue: position ${job.position}.` : "Waiting for a worker…";
      } else if (job.status === "running") {
        detail.textContent = steps ? `Step ${step} / ${steps}` : "Starting…";
      } else if (job.status === "completed") {
        const n = job.images.length;
        const done = steps ? `Step ${steps} / ${steps} · ` : "";
        detail.textContent = `${done}${n} image${n === 1 ? "" : "s"}${job.cached ? " (from cache)" : ""}.`;
      } else {
        detail.textContent = "";
      }
      if (job.error) this.showError(job.error.message || job.error.code);
      this.cancelBtn.hidden = TERMINAL.includes(job.status);
      if (job.status === "completed") {
        this.imagesEl.replaceChildren(
          ...job.images.map((img) => {
            const a = document.createElement("a");
            a.className = "tile";
            a.href = `/images/${encodeURIComponent(img.id)}`;
            const im = document.createElement("img");
            im.src = img.url;
            im.alt = "Result image";
            a.append(im);
            return a;
          }),
        );
      }
    }

    stop() {
      if (this.source) { this.source.close(); this.source = null; }
    }

    end() {
      this.stop();
      if (this.onEnd) this.onEnd();
    }

    async refresh() {
      if (!this.jobId) return;
      const resp = await Easel.api("GET", `/api/v1/jobs/${encodeURIComponent(this.jobId)}`);
      if (resp.ok) {
        const job = await resp.json();
        this.render(job);
        if (TERMINAL.includes(job.status)) this.end();
      }
    }

    follow(id) {
      this.stop();
      const source = new EventSource(`/api/v1/jobs/${encodeURIComponent(id)}/events`);
      this.source = source;
      for (const type of ["queued", "running", "progress", "completed", "failed", "cancelled"]) {
        source.addEventListener(type, (ev) => {
          this.retryDelay = 0;
          const job = JSON.parse(ev.data);
          this.render(job);
          if (TERMINAL.includes(job.status)) this.end();
        });
      }
      source.addEventListener("error", (ev) => {
        if (ev.data) {  // an error event from the server, not a dropped connection
          const err = JSON.parse(ev.data);
          this.showError(err.message);
          this.end();
        } else if (source.readyState === EventSource.CLOSED) {
          this.source = null;
          this.resume(id);
        }
      });
    }

    // The browser gives up on a stream that answered with an error (a backend restarting): look at
    // the job, and follow it again after a growing pause until it has ended.
    async resume(id) {
      const delay = (this.retryDelay = Math.min((this.retryDelay || 250) * 2, 8000));
      try {
        const resp = await Easel.api("GET", `/api/v1/jobs/${encodeURIComponent(id)}`);
        if (resp.ok) {
          const job = await resp.json();
          this.render(job);
          if (TERMINAL.includes(job.status)) { this.end(); return; }
        }
      } catch (e) {
        // The network or the gateway is down: try again after the pause.
      }
      setTimeout(() => {
        if (this.jobId === id && !this.source) this.follow(id);
      }, delay);
    }

    async cancel() {
      if (!this.jobId) return;
      this.cancelBtn.disabled = true;
      const resp = await Easel.api("POST", `/api/v1/jobs/${encodeURIComponent(this.jobId)}/cancel`);
      this.cancelBtn.disabled = false;
      if (resp.ok) {
        const payload = await resp.json();
        this.render(payload.job);
      } else {
        const err = (await resp.json().catch(() => ({}))).error || {};
        this.showError(err.message || "Could not cancel the job.");
      }
    }
  }

  Easel.JobPanel = JobPanel;
})();
