// Calls of the sidecar's app API (docs/app-protocol.md), asynchronous (main thread) and
// synchronous (for `sql.exec` and the other synchronous Cloudflare APIs, see sync.mjs).

import http from "node:http";

/** An error answered by the app API: `{"error": {"code", "message"}}` with a 4xx/5xx. */
export class SteadApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "SteadApiError";
    this.status = status;
    this.code = code;
  }
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

/** The app API base, from `STEAD_API_URL`. */
export function apiBase() {
  const raw = process.env.STEAD_API_URL || "http://127.0.0.1:9787";
  const url = new URL(raw);
  if (url.protocol !== "http:") throw new Error(`STEAD_API_URL must be an http:// URL, not ${raw}`);
  return url;
}

/**
 * Sends one HTTP request to the app API. `headers` is a plain object or array of pairs; the
 * answer is `{status, headers (raw pairs), body (Buffer)}`.
 */
export function rawRequest(method, path, headers, body) {
  const base = apiBase();
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        agent,
        host: base.hostname,
        port: base.port || 80,
        method,
        path,
        headers,
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode, headers: res.rawHeaders, body: Buffer.concat(chunks) }),
        );
        res.on("error", reject);
      },
    );
    req.setNoDelay(true);
    req.on("error", (e) =>
      reject(new SteadApiError(502, "api_unreachable", `the Stead app API cannot be reached: ${e.message}`)),
    );
    req.end(body);
  });
}

/** Turns an app API answer into its JSON, or throws its error. */
export function decodeAnswer(status, body) {
  let json;
  try {
    json = body.length ? JSON.parse(body.toString("utf8")) : {};
  } catch {
    throw new SteadApiError(status, "bad_answer", `the app API answered ${status} with a body that is not JSON`);
  }
  if (status >= 400) {
    const e = json && json.error;
    throw new SteadApiError(status, e?.code ?? "error", e?.message ?? `the app API answered ${status}`);
  }
  return json;
}

/** `POST /v1/{call}` with a JSON body under the turn `token`; resolves to the answer's JSON. */
export async function call(token, name, payload) {
  const body = Buffer.from(JSON.stringify(payload ?? {}), "utf8");
  const res = await rawRequest(
    "POST",
    `/v1/${name}`,
    { "stead-turn": token, "content-type": "application/json", "content-length": body.length },
    body,
  );
  return decodeAnswer(res.status, res.body);
}
