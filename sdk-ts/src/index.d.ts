// Types of `cloudflare:workers` on Stead (`@stead/workers`): the same names and shapes as
// Cloudflare's, for the APIs Stead offers (see docs/sdk-ts.md). Hand-written; no compile step.
//
// In a TypeScript project, either keep @cloudflare/workers-types (the shapes are compatible), or
// map the module in tsconfig.json, with the DOM library for Request, Response and WebSocket:
//   "compilerOptions": { "lib": ["es2022", "dom", "dom.iterable"],
//                        "paths": { "cloudflare:workers": ["./node_modules/@stead/workers"] } }

declare global {
  interface DurableObjectId {
    toString(): string;
    equals(other: DurableObjectId): boolean;
    readonly name?: string;
  }

  type Rpc<T> = {
    [K in keyof T as K extends "fetch" | "alarm" | "webSocketMessage" | "webSocketClose" | "webSocketError" | "ctx" | "env" ? never : T[K] extends (...args: any[]) => any ? K : never]:
      T[K] extends (...args: infer A) => infer R ? (...args: A) => Promise<Awaited<R>> : never;
  };

  type DurableObjectStub<T = undefined> = {
    readonly id: DurableObjectId;
    readonly name?: string;
    fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
  } & (T extends undefined ? Record<string, (...args: any[]) => Promise<any>> : Rpc<T>);

  interface DurableObjectNamespace<T = undefined> {
    idFromName(name: string): DurableObjectId;
    idFromString(id: string): DurableObjectId;
    newUniqueId(options?: { jurisdiction?: string }): DurableObjectId;
    get(id: DurableObjectId, options?: { locationHint?: string }): DurableObjectStub<T>;
    getByName(name: string, options?: { locationHint?: string }): DurableObjectStub<T>;
    jurisdiction(name: string): DurableObjectNamespace<T>;
  }

  interface DurableObjectListOptions {
    start?: string;
    startAfter?: string;
    end?: string;
    prefix?: string;
    reverse?: boolean;
    limit?: number;
    allowConcurrency?: boolean;
    noCache?: boolean;
  }

  interface DurableObjectGetOptions {
    allowConcurrency?: boolean;
    noCache?: boolean;
  }

  interface DurableObjectPutOptions {
    allowConcurrency?: boolean;
    allowUnconfirmed?: boolean;
    noCache?: boolean;
  }

  type SqlStorageValue = ArrayBuffer | string | number | null;

  interface SqlStorageCursor<T = Record<string, SqlStorageValue>> extends Iterator<T>, Iterable<T> {
    next(): IteratorResult<T>;
    toArray(): T[];
    one(): T;
    raw<U extends SqlStorageValue[] = SqlStorageValue[]>(): IterableIterator<U> & { toArray(): U[] };
    readonly columnNames: string[];
    readonly rowsRead: number;
    readonly rowsWritten: number;
  }

  interface SqlStorage {
    exec<T = Record<string, SqlStorageValue>>(
      query: string,
      ...bindings: (SqlStorageValue | boolean | bigint | ArrayBufferView)[]
    ): SqlStorageCursor<T>;
    readonly databaseSize: number;
  }

  interface DurableObjectStorage {
    get<T = unknown>(key: string, options?: DurableObjectGetOptions): Promise<T | undefined>;
    get<T = unknown>(keys: string[], options?: DurableObjectGetOptions): Promise<Map<string, T>>;
    put<T>(key: string, value: T, options?: DurableObjectPutOptions): Promise<void>;
    put<T>(entries: Record<string, T>, options?: DurableObjectPutOptions): Promise<void>;
    delete(key: string, options?: DurableObjectPutOptions): Promise<boolean>;
    delete(keys: string[], options?: DurableObjectPutOptions): Promise<number>;
    list<T = unknown>(options?: DurableObjectListOptions): Promise<Map<string, T>>;
    deleteAll(options?: DurableObjectPutOptions): Promise<void>;
    getAlarm(options?: DurableObjectGetOptions): Promise<number | null>;
    setAlarm(scheduledTime: number | Date, options?: DurableObjectPutOptions): Promise<void>;
    deleteAlarm(options?: DurableObjectPutOptions): Promise<void>;
    /** If `closure` throws, the whole turn rolls back on Stead (no nested transactions). */
    transaction<T>(closure: (txn: DurableObjectStorage) => Promise<T>): Promise<T>;
    /** If `closure` throws, the whole turn rolls back on Stead (no nested transactions). */
    transactionSync<T>(closure: () => T): T;
    sync(): Promise<void>;
    readonly sql: SqlStorage;
  }

  /** The DOM's WebSocket (tsconfig "lib": ["dom"]), with what Workers add. */
  interface WebSocket {
    accept(): void;
    serializeAttachment(value: unknown): void;
    deserializeAttachment(): any;
  }

  var WebSocketPair: {
    new (): { 0: WebSocket; 1: WebSocket };
  };

  class WebSocketRequestResponsePair {
    constructor(request: string, response: string);
    readonly request: string;
    readonly response: string;
  }

  interface ResponseInit {
    webSocket?: WebSocket | null;
  }

  interface Response {
    readonly webSocket: WebSocket | null;
  }

  interface AlarmInvocationInfo {
    readonly retryCount: number;
    readonly isRetry: boolean;
  }

  interface DurableObjectState {
    readonly id: DurableObjectId;
    readonly storage: DurableObjectStorage;
    readonly props: any;
    waitUntil(promise: Promise<unknown>): void;
    blockConcurrencyWhile<T>(callback: () => Promise<T>): Promise<T>;
    acceptWebSocket(ws: WebSocket, tags?: string[]): void;
    getWebSockets(tag?: string): WebSocket[];
    getTags(ws: WebSocket): string[];
    setWebSocketAutoResponse(maybeReqResp?: WebSocketRequestResponsePair): void;
    getWebSocketAutoResponse(): WebSocketRequestResponsePair | null;
    getWebSocketAutoResponseTimestamp(ws: WebSocket): Date | null;
    setHibernatableWebSocketEventTimeout(timeoutMs?: number): void;
    getHibernatableWebSocketEventTimeout(): number | null;
    abort(reason?: string): void;
  }

  interface ExecutionContext {
    waitUntil(promise: Promise<unknown>): void;
    passThroughOnException(): void;
    readonly props: any;
  }

  interface ExportedHandler<Env = unknown> {
    fetch?(request: Request, env: Env, ctx: ExecutionContext): Response | Promise<Response>;
  }
}

export declare abstract class DurableObject<Env = unknown> {
  protected ctx: DurableObjectState;
  protected env: Env;
  constructor(ctx: DurableObjectState, env: Env);
  fetch?(request: Request): Response | Promise<Response>;
  alarm?(alarmInfo?: AlarmInvocationInfo): void | Promise<void>;
  webSocketMessage?(ws: WebSocket, message: string | ArrayBuffer): void | Promise<void>;
  webSocketClose?(ws: WebSocket, code: number, reason: string, wasClean: boolean): void | Promise<void>;
  webSocketError?(ws: WebSocket, error: unknown): void | Promise<void>;
}

export declare abstract class WorkerEntrypoint<Env = unknown> {
  protected ctx: ExecutionContext;
  protected env: Env;
  constructor(ctx: ExecutionContext, env: Env);
  fetch?(request: Request): Response | Promise<Response>;
}

export declare abstract class WorkflowEntrypoint<Env = unknown> {
  protected ctx: ExecutionContext;
  protected env: Env;
  constructor(ctx: ExecutionContext, env: Env);
}

export declare class RpcTarget {}

export declare const WebSocketPair: { new (): { 0: WebSocket; 1: WebSocket } };
export { WebSocketRequestResponsePair };

/** The Worker's env (vars and namespaces), as handed to every class and the front. */
export declare const env: Record<string, any>;
export declare function withEnv<T>(newEnv: Record<string, any>, fn: () => T): T;

/** The bytes Stead stores for a value (JSON text, or V8 serialization; see docs/sdk-ts.md). */
export declare function encodeValue(value: unknown): Uint8Array;
export declare function decodeValue(bytes: Uint8Array): unknown;
