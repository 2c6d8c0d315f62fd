// The official OpenAI library for Node against a running sharegpt4v-server: text, image data URL, streaming with
// usage, concurrent requests, a bad image. Exits 1 on the first check that fails. Run through check.sh.
import OpenAI from "openai";
import fs from "fs";
const client = new OpenAI({ baseURL: process.env.URL + "/v1", apiKey: "k" });
const model = (await client.models.list()).data[0].id;
console.log("model", model);
const img = "data:image/png;base64," + fs.readFileSync(process.env.IMG).toString("base64");
const r1 = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Hello there" }], max_tokens: 5, temperature: 0 });
console.log("text", JSON.stringify(r1.choices[0]), JSON.stringify(r1.usage));
const r2 = await client.chat.completions.create({ model, messages: [{ role: "user", content: [{ type: "text", text: "What is in the image?" }, { type: "image_url", image_url: { url: img } }] }], max_tokens: 5, temperature: 0 });
console.log("image", JSON.stringify(r2.choices[0].message), JSON.stringify(r2.usage));
const s = await client.chat.completions.create({ model, messages: [{ role: "user", content: [{ type: "text", text: "What is in the image?" }, { type: "image_url", image_url: { url: img } }] }], max_tokens: 5, temperature: 0, stream: true, stream_options: { include_usage: true } });
let text = "", usage = null;
for await (const c of s) { if (c.choices[0]?.delta?.content) text += c.choices[0].delta.content; if (c.usage) usage = c.usage; }
console.log("stream equal", text === r2.choices[0].message.content, JSON.stringify(usage));
if (text !== r2.choices[0].message.content || !usage || usage.completion_tokens !== 5) process.exit(1);
const many = await Promise.all([...Array(6).keys()].map(i => client.chat.completions.create({ model, messages: [{ role: "user", content: "Tell me about " + i }], max_tokens: 4, temperature: 0 })));
console.log("concurrent", many.map(m => m.choices[0].finish_reason).join(","));
if (many.some(m => m.usage.completion_tokens !== 4)) process.exit(1);
try { await client.chat.completions.create({ model, messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "data:image/png;base64,AAAA" } }] }], max_tokens: 5 }); console.log("bad image accepted"); process.exit(1); }
catch (e) {
  console.log("bad image", e.status, e.error?.type ?? e.type, e.message.slice(0, 120));
  if (e.status !== 400) process.exit(1);
}
console.log("all checks passed");
