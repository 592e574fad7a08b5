// The generate page: submit to the REST API, follow the job over server-sent events (job.js).
"use strict";

(() => {
  const form = document.getElementById("generate-form");
  if (!form) return;
  const Easel = window.Easel;
  const submitBtn = document.getElementById("generate-btn");
  const modelSel = document.getElementById("f-model");
  const samplerSel = document.getElementById("f-sampler");
  const panel = new Easel.JobPanel();

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
      samplerSel.add(new Option(s, s, false, s === opt.dataset.sampler));
    }
  };
  if (modelSel) modelSel.addEventListener("change", applyModel);

  const body = () => {
    const out = {prompt: form.elements.prompt.value.trim()};
    for (const name of ["negative_prompt", "model", "sampler"]) {
      const el = form.elements[name];
      if (el && el.value.trim()) out[name] = el.value.trim();
    }
    for (const name of ["width", "height", "steps", "seed", "n", "guidance"]) {
      const el = form.elements[name];
      if (el && el.value.trim() !== "") out[name] = Number(el.value);
    }
    return out;
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    Easel.clearErrors(form);
    const data = body();
    if (!data.prompt) { Easel.showError(form, "prompt", "Describe the image you want."); return; }
    Easel.submitJob(form, submitBtn, "/api/v1/generations", data, panel);
  });
})();
