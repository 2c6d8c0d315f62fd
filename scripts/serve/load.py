#!/usr/bin/env python3
"""Load benchmark for sharegpt4v-server: C concurrent streaming clients, each sending requests back to back.

Prints one JSON object per concurrency level: requests/s, p50/p95 time to first token, completion tokens/s
(all clients together), per-request decode speed, and the CPU other processes took during the level
(other_cpu_pct, from /proc/stat minus the server's and this client's own time).
Standard library only; the server must already be up (see bench.sh).
"""
import argparse, base64, http.client, json, os, statistics, threading, time
from urllib.parse import urlparse

PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a short story about a lighthouse keeper and a storm.",
    "List some good habits for writing maintainable software.",
    "Describe how bread is made, step by step.",
    "What should a traveller pack for a week in the mountains?",
    "Summarise the rules of chess for a beginner.",
    "Give advice to someone learning to play the piano.",
    "Describe a busy market in the morning.",
]


def cpu_times(pid):
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    busy = sum(parts) - parts[3] - parts[4]  # everything but idle and iowait
    def proc(p):
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read().rsplit(")", 1)[1].split()
            return int(s[11]) + int(s[12])
        except OSError:
            return 0
    return busy, proc(pid) + proc(os.getpid()), sum(parts)


def one_request(url, model, key, prompt, image, max_tokens):
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=900)
    content = prompt if image is None else [
        {"type": "text", "text": prompt},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}},
    ]
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, headers)
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]}")
    ttft = None
    usage = None
    buf = b""
    while True:
        chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    continue
                obj = json.loads(data)
                for c in obj.get("choices", []):
                    if c.get("delta", {}).get("content") and ttft is None:
                        ttft = time.perf_counter() - start
                if obj.get("usage"):
                    usage = obj["usage"]
    total = time.perf_counter() - start
    conn.close()
    tokens = usage["completion_tokens"] if usage else 0
    return {"ttft": ttft or total, "total": total, "tokens": tokens}


def pct(values, q):
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def run_level(args, clients, requests, image):
    results, errors, lock = [], [], threading.Lock()
    counter = iter(range(requests))
    def worker():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                r = one_request(args.url, args.model, args.api_key, PROMPTS[i % len(PROMPTS)], image, args.max_tokens)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - reported in the JSON
                with lock:
                    errors.append(str(e))
    busy0, own0, all0 = cpu_times(args.server_pid)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    busy1, own1, all1 = cpu_times(args.server_pid)
    other = max(0, (busy1 - busy0) - (own1 - own0)) / max(1, all1 - all0) * 100
    ttfts = [r["ttft"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    decode = [(r["tokens"] - 1) / (r["total"] - r["ttft"]) for r in results if r["tokens"] > 1 and r["total"] > r["ttft"]]
    return {
        "clients": clients, "requests": len(results), "errors": len(errors), "image": image is not None,
        "max_tokens": args.max_tokens, "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 3),
        "ttft_p50_s": round(pct(ttfts, 0.5), 3) if ttfts else None,
        "ttft_p95_s": round(pct(ttfts, 0.95), 3) if ttfts else None,
        "completion_tokens_per_s": round(tokens / wall, 2),
        "per_request_decode_tokens_per_s_median": round(statistics.median(decode), 2) if decode else None,
        "other_cpu_pct": round(other, 1),
        "first_error": errors[0] if errors else None,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:18500")
    p.add_argument("--model", required=True)
    p.add_argument("--api-key")
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--requests", default="3,8,16", help="requests per level, as many as --clients")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--image", help="PNG sent with every request (data URL)")
    args = p.parse_args()
    image = base64.b64encode(open(args.image, "rb").read()).decode() if args.image else None
    one_request(args.url, args.model, args.api_key, "Hello", None, 2)  # warm-up
    for c, n in zip([int(x) for x in args.clients.split(",")], [int(x) for x in args.requests.split(",")]):
        print(json.dumps(run_level(args, c, n, image)), flush=True)


if __name__ == "__main__":
    main()
