// The feature tests again with the runner forced to protocol 1 (STEAD_APP_PROTOCOL=1: every
// storage operation a call of the app API, no cache, no writes carried with the answer).
process.env.STEAD_APP_PROTOCOL = "1";
await import("./features.test.mjs");
