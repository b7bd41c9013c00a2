// The chat room, in TypeScript against Cloudflare's Durable Object API: one `ChatRoom` object
// per room, holding the room's WebSockets (hibernatable: the sidecar keeps them while the object
// sleeps) and its history in SQL. The twin of examples/chat (Rust); same routes and messages.
//
// A client connects a WebSocket to `/objects/ChatRoom/name/{room}/ws?name=alice` and sends
// text. Every message is stored in `messages (seq INTEGER PRIMARY KEY, name, text, at_ms)` and
// broadcast to every socket of the room as `{"seq": n, "name": "alice", "text": "…", "at_ms": …}`.
// A socket that connects gets the last 100 messages first, oldest first.
//
// Object routes (under `/objects/ChatRoom/name/{room}`):
//   GET /ws?name=alice with Upgrade: websocket   joins as `alice` (1 to 32 characters; `anonymous` if absent)
//   GET /messages?limit=N                       the last N messages (default 100, at most 1000), oldest first
//
// On a socket: any text is a message (trimmed; at most 2000 characters; empty ones are ignored).
// `ping` is answered `pong` by the sidecar itself. A message starting with `!rollback` is stored
// and broadcast, and then its turn fails: the turn rolls back, so nobody receives it and it is not
// in the history (the output gate at work).
//
// Stateless routes: `GET /` serves the chat page.

import { DurableObject } from "cloudflare:workers";
import PAGE from "./index.html";

/** Messages sent to a socket when it joins. */
const HISTORY = 100;
/** Longest message, in characters. */
const MAX_TEXT = 2000;
/** Longest user name, in characters. */
const MAX_NAME = 32;

const SCHEMA = `CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    at_ms INTEGER NOT NULL
)`;

interface ChatMessage {
  seq: number;
  name: string;
  text: string;
  at_ms: number;
}

interface Env {
  CHAT: DurableObjectNamespace<ChatRoom>;
}

function error(status: number, code: string, message: string, headers: Record<string, string> = {}): Response {
  return Response.json({ error: { code, message } }, { status, headers });
}

/** The user's name from `?name=`: `anonymous` if absent, null if it is not acceptable. */
function userName(url: URL): string | null {
  const name = (url.searchParams.get("name") ?? "").trim();
  if (name === "") return "anonymous";
  // eslint-disable-next-line no-control-regex
  if ([...name].length > MAX_NAME || /[\u0000-\u001f\u007f-\u009f]/.test(name)) return null;
  return name;
}

export class ChatRoom extends DurableObject<Env> {
  /** Whether this instance created the table already. */
  schemaReady = false;

  /** The last `limit` messages, oldest first; none if the room never had one (reading creates nothing). */
  history(limit: number): ChatMessage[] {
    try {
      return this.ctx.storage.sql
        .exec<ChatMessage>(
          `SELECT seq, name, text, at_ms FROM
             (SELECT seq, name, text, at_ms FROM messages ORDER BY seq DESC LIMIT ?)
           ORDER BY seq`,
          limit,
        )
        .toArray();
    } catch (e) {
      if (e instanceof Error && e.message.includes("no such table")) return [];
      throw e;
    }
  }

  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    if (request.method === "GET" && url.pathname === "/messages") {
      const asked = Number.parseInt(url.searchParams.get("limit") ?? "", 10);
      const limit = Math.min(Math.max(Number.isNaN(asked) ? HISTORY : asked, 0), 1000);
      return Response.json(this.history(limit));
    }
    if (url.pathname === "/ws" && request.headers.get("Upgrade") === "websocket") return this.join(url);
    if (request.method === "GET" && url.pathname === "/ws") {
      return error(426, "upgrade_required", "connect a WebSocket here", { upgrade: "websocket" });
    }
    if (request.headers.get("Upgrade") === "websocket") {
      return error(404, "not_found", "a chat room's socket is at /ws");
    }
    return error(404, "not_found", `a chat room has no route ${request.method} ${url.pathname}`);
  }

  join(url: URL): Response {
    const name = userName(url);
    if (name === null) return error(400, "invalid_name", `a name has 1 to ${MAX_NAME} printable characters`);
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server);
    server.serializeAttachment({ name });
    this.ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair("ping", "pong"));
    // Sent during the turn, these leave once the socket is accepted, before any later broadcast.
    for (const message of this.history(HISTORY)) server.send(JSON.stringify(message));
    return new Response(null, { status: 101, webSocket: client });
  }

  async webSocketMessage(ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
    if (typeof message !== "string") {
      ws.send(JSON.stringify({ error: "send text" }));
      return;
    }
    const text = message.trim();
    if (text === "") return;
    if ([...text].length > MAX_TEXT) {
      ws.send(JSON.stringify({ error: `at most ${MAX_TEXT} characters` }));
      return;
    }
    const name: string = ws.deserializeAttachment()?.name ?? "anonymous";
    const sql = this.ctx.storage.sql;
    if (!this.schemaReady) {
      sql.exec(SCHEMA);
      this.schemaReady = true;
    }
    const at_ms = Date.now();
    const { seq } = sql
      .exec<{ seq: number }>(
        `INSERT INTO messages (seq, name, text, at_ms)
         VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM messages), ?, ?, ?)
         RETURNING seq`,
        name,
        text,
        at_ms,
      )
      .one();
    const out = JSON.stringify({ seq, name, text, at_ms });
    for (const peer of this.ctx.getWebSockets()) peer.send(out);
    if (text.startsWith("!rollback")) {
      // Stored and broadcast, and now the turn fails: neither happens.
      throw new Error(`message ${seq} asked to be rolled back`);
    }
  }

  async webSocketClose(_ws: WebSocket, _code: number, _reason: string, _wasClean: boolean): Promise<void> {}

  async webSocketError(_ws: WebSocket, _error: unknown): Promise<void> {}
}

export default {
  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    if (request.method === "GET" && (url.pathname === "/" || url.pathname === "/index.html")) {
      return new Response(PAGE, { headers: { "content-type": "text/html; charset=utf-8" } });
    }
    return error(404, "not_found", `no route ${request.method} ${url.pathname}; the chat page is at /`);
  },
} satisfies ExportedHandler<Env>;
