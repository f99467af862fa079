// Compiled, never run (`npm test` type-checks it): the platform's own
// classes fit the options as they are, under `strict`.
import { RtcClient } from "../../src/index.js";

export const inBrowser = new RtcClient({
  routeUrls: ["https://lb.example"],
  user: "u1",
  WebSocket,
  fetch,
  storage: localStorage,
});

export const inSession = new RtcClient({ routeUrls: ["https://lb.example"], user: "u1", storage: sessionStorage });
