// The edit page: pick a kind, paint an inpainting mask on a canvas over the image, submit the edit
// to the REST API (multipart: the mask travels as a PNG, white = repaint) and follow the job.
"use strict";

(() => {
  const form = document.getElementById("edit-form");
  if (!form) return;
  const Easel = window.Easel;
  const panel = new Easel.JobPanel();
  const submitBtn = document.getElementById("edit-btn");
  const stage = document.getElementById("stage");
  const source = document.getElementById("edit-source");
  const canvas = document.getElementById("mask-canvas");
  const tools = document.getElementById("mask-tools");
  const brush = document.getElementById("f-brush");
  const brushOut = document.getElementById("brush-size");
  const strength = document.getElementById("f-strength");
  const strengthOut = document.getElementById("strength-value");
  const kindHint = document.getElementById("kind-hint");
  const modelSel = document.getElementById("f-model");
  const ctx = canvas.getContext("2d");
  const imageW = canvas.width;
  const imageH = canvas.height;
  // Draw at a finer resolution than a small image has, so strokes look smooth; the mask is scaled
  // back to the image's own size when it is sent.
  const scale = Math.max(1, Math.ceil(512 / Math.max(imageW, imageH, 1)));
  canvas.width = imageW * scale;
  canvas.height = imageH * scale;
  let painted = false;

  const kind = () => (form.querySelector('input[name="kind"]:checked') || {}).value || "img2img";

  const applyKind = () => {
    const k = kind();
    stage.dataset.kind = k;
    tools.hidden = k !== "inpaint";
    canvas.hidden = k !== "inpaint";
    const checked = form.querySelector('input[name="kind"]:checked');
    if (checked) kindHint.textContent = checked.dataset.hint || "";
    // Only models that serve this kind can be picked.
    if (modelSel) {
      let firstOk = null;
      for (const opt of modelSel.options) {
        const ok = (opt.dataset.kinds || "").split(",").includes(k);
        opt.disabled = !ok;
        if (ok && !firstOk) firstOk = opt;
      }
      if (modelSel.selectedOptions[0] && modelSel.selectedOptions[0].disabled && firstOk) firstOk.selected = true;
    }
  };
  for (const radio of form.querySelectorAll('input[name="kind"]')) radio.addEventListener("change", applyKind);
  applyKind();

  const showStrength = () => { strengthOut.textContent = Number(strength.value).toFixed(2); };
  strength.addEventListener("input", showStrength);
  showStrength();

  const showBrush = () => { brushOut.textContent = `${brush.value} px`; };
  brush.addEventListener("input", showBrush);
  showBrush();

  // --- painting the mask ------------------------------------------------------------------------
  let drawing = false;
  let last = null;

  const point = (ev) => {
    const rect = canvas.getBoundingClientRect();
    return {
      x: ((ev.clientX - rect.left) / rect.width) * canvas.width,
      y: ((ev.clientY - rect.top) / rect.height) * canvas.height,
      ratio: canvas.width / rect.width,
    };
  };

  const stroke = (from, to) => {
    ctx.globalCompositeOperation = "source-over";
    ctx.strokeStyle = "#ff3d7f";  // shown translucent; only where it is painted matters
    ctx.fillStyle = "#ff3d7f";
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = Number(brush.value) * to.ratio;
    ctx.beginPath();
    if (from) {
      ctx.moveTo(from.x, from.y);
      ctx.lineTo(to.x, to.y);
      ctx.stroke();
    } else {
      ctx.arc(to.x, to.y, ctx.lineWidth / 2, 0, Math.PI * 2);
      ctx.fill();
    }
    painted = true;
    stage.classList.add("has-mask");
  };

  canvas.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0) return;
    drawing = true;
    canvas.setPointerCapture(ev.pointerId);
    last = point(ev);
    stroke(null, last);
    ev.preventDefault();
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!drawing) return;
    const p = point(ev);
    stroke(last, p);
    last = p;
  });
  const stop = () => { drawing = false; last = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);

  document.getElementById("mask-clear").addEventListener("click", () => {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    painted = false;
    stage.classList.remove("has-mask");
  });

  // The mask at the image's size: white where painted, black elsewhere.
  const maskBlob = () => new Promise((resolve) => {
    const out = document.createElement("canvas");
    out.width = imageW;
    out.height = imageH;
    const octx = out.getContext("2d");
    octx.drawImage(canvas, 0, 0, imageW, imageH);
    const data = octx.getImageData(0, 0, imageW, imageH);
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      const v = px[i + 3] > 24 ? 255 : 0;
      px[i] = v; px[i + 1] = v; px[i + 2] = v; px[i + 3] = 255;
    }
    octx.putImageData(data, 0, 0);
    out.toBlob(resolve, "image/png");
  });

  // --- submitting -------------------------------------------------------------------------------
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    Easel.clearErrors(form);
    const k = kind();
    const prompt = form.elements.prompt.value.trim();
    if (!prompt && (k === "img2img" || k === "inpaint")) {
      Easel.showError(form, "prompt", "Describe what the new picture should show.");
      return;
    }
    if (k === "inpaint" && !painted) {
      Easel.showError(form, "mask", "Paint over the part of the picture to repaint first.");
      return;
    }
    const data = new FormData();
    data.append("kind", k);
    data.append("image_id", form.dataset.imageId);
    if (prompt) data.append("prompt", prompt);
    const negative = form.elements.negative_prompt.value.trim();
    if (negative) data.append("negative_prompt", negative);
    data.append("strength", strength.value);
    if (modelSel && modelSel.value) data.append("model", modelSel.value);
    for (const name of ["steps", "seed"]) {
      const v = form.elements[name].value.trim();
      if (v !== "") data.append(name, v);
    }
    if (k === "inpaint") {
      data.append("mask", await maskBlob(), "mask.png");
    }
    Easel.submitJob(form, submitBtn, "/api/v1/edits", data, panel);
  });

  // Keep the canvas exactly over the picture (it is sized by CSS; this only guards odd layouts).
  source.addEventListener("load", () => stage.classList.add("loaded"));
  if (source.complete) stage.classList.add("loaded");
})();
