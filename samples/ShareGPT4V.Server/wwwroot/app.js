// The web demo: one conversation about (at most) one image, answered by /v1/chat/completions as a stream.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { messages: [], image: null, imagePending: false, controller: null, model: null };

function setStatus(text) { $("status").textContent = text; }

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function loadModel() {
  try {
    const r = await fetch("v1/models", { headers: headers() });
    if (!r.ok) { $("model").textContent = r.status === 401 ? "enter the API key" : "model unavailable (" + r.status + ")"; return; }
    const body = await r.json();
    state.model = body.data[0].id;
    $("model").textContent = state.model;
  } catch (e) { $("model").textContent = "server unreachable"; }
}

function setImage(dataUrl) {
  state.image = dataUrl;
  state.imagePending = !!dataUrl; // a newly chosen image goes with the next question
  $("image-preview").src = dataUrl || "";
  $("image-preview").hidden = !dataUrl;
  $("remove-image").hidden = !dataUrl;
  $("drop-hint").hidden = !!dataUrl;
}

function readImage(file) {
  if (!file || !file.type.startsWith("image/")) { setStatus("that is not an image"); return; }
  const reader = new FileReader();
  reader.onload = () => setImage(reader.result);
  reader.readAsDataURL(file);
}

function render() {
  const chat = $("chat");
  chat.replaceChildren();
  for (const m of state.messages) {
    const div = document.createElement("div");
    div.className = "message " + m.role;
    if (m.image) { const img = document.createElement("img"); img.src = m.image; div.appendChild(img); }
    div.appendChild(document.createTextNode(m.content));
    if (m.role === "assistant") { div.dataset.state = m.state; div.dataset.chunks = String(m.chunks || 0); }
    chat.appendChild(div);
    m.element = div;
  }
  chat.scrollTop = chat.scrollHeight;
  const busy = !!state.controller;
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("regenerate").disabled = busy || !state.messages.some((m) => m.role === "assistant");
}

function updateAssistant(m) {
  m.element.lastChild.textContent = m.content;
  m.element.dataset.state = m.state;
  m.element.dataset.chunks = String(m.chunks);
  $("chat").scrollTop = $("chat").scrollHeight;
}

// The OpenAI request: the image (if any) goes with the first user message, as LLaVA's demo does.
function requestMessages() {
  const out = [];
  for (const m of state.messages) {
    if (m.role === "assistant") { if (m.state === "done" || m.state === "stopped") out.push({ role: "assistant", content: m.content }); continue; }
    out.push(m.image
      ? { role: "user", content: [{ type: "text", text: m.content }, { type: "image_url", image_url: { url: m.image } }] }
      : { role: "user", content: m.content });
  }
  return out;
}

async function generate() {
  const answer = { role: "assistant", content: "", state: "streaming", chunks: 0 };
  const body = {
    model: state.model || undefined,
    messages: requestMessages(),
    stream: true,
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: Number($("max-tokens").value),
  };
  state.messages.push(answer);
  state.controller = new AbortController();
  render();
  setStatus("generating…");
  try {
    const r = await fetch("v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal });
    if (!r.ok) {
      let message = "HTTP " + r.status;
      try { message = (await r.json()).error.message; } catch (_) { }
      throw new Error(message);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") { answer.state = "done"; continue; }
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          for (const c of chunk.choices) {
            if (c.delta && c.delta.content) { answer.content += c.delta.content; answer.chunks++; }
          }
          updateAssistant(answer);
        }
      }
    }
    if (answer.state !== "done") throw new Error("the answer ended early");
    setStatus("ready");
  } catch (e) {
    if (e.name === "AbortError") { answer.state = "stopped"; setStatus("stopped"); }
    else { answer.state = "error"; answer.content = answer.content || ("error: " + e.message); setStatus("error: " + e.message); }
  } finally {
    state.controller = null;
    render();
  }
}

function send() {
  const text = $("prompt").value.trim();
  if (!text || state.controller) return;
  state.messages.push({ role: "user", content: text, image: state.imagePending ? state.image : null });
  state.imagePending = false;
  $("prompt").value = "";
  generate();
}

$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } });
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("regenerate").addEventListener("click", () => {
  if (state.controller) return;
  while (state.messages.length && state.messages[state.messages.length - 1].role === "assistant") state.messages.pop();
  if (state.messages.length) generate();
});
$("clear").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.messages = [];
  setImage(null);
  $("image-input").value = "";
  render();
  setStatus("ready");
});
$("image-input").addEventListener("change", (e) => readImage(e.target.files[0]));
$("remove-image").addEventListener("click", () => { setImage(null); $("image-input").value = ""; });
$("api-key").addEventListener("change", loadModel);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); readImage(e.dataTransfer.files[0]); });
document.addEventListener("paste", (e) => {
  for (const item of e.clipboardData.items) {
    if (item.type.startsWith("image/")) { readImage(item.getAsFile()); e.preventDefault(); return; }
  }
});
render();
loadModel();
