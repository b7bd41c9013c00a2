// The event being handled, as seen from any code that runs on its behalf (AsyncLocalStorage):
// stubs use its turn token for object calls.
import { AsyncLocalStorage } from "node:async_hooks";

export const currentEvent = new AsyncLocalStorage();

/** The token of the event this code runs for, or null outside any event. */
export function currentToken() {
  const ev = currentEvent.getStore();
  return ev ? ev.token : null;
}
