// The chat demo: one RtcClient per page. The page's query names the load
// balancers and, optionally, the user and whom to write to:
// ?lb=http://127.0.0.1:8080,…&user=alice&to=bob (scripts/demo --web prints
// such URLs); without a user the page asks for a name. The resume point
// lives in localStorage, so a reload picks up where the page was.
import { RtcClient } from "../dist/index.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const user = params.get("user");
if (!user) {
  $("pick").hidden = false;
  $("pick").addEventListener("submit", (event) => {
    event.preventDefault();
    params.set("user", $("name").value.trim());
    location.search = params.toString();
  });
} else {
  start(user);
}

function start(user) {
  const lbs = (params.get("lb") || location.origin).split(",");
  document.querySelector("main").hidden = false;
  $("me").textContent = user;
  $("to").value = params.get("to") || "";

  const client = new RtcClient({ routeUrls: lbs, user, storage: localStorage });
  window.rtc = client; // for the browser test and the curious

  function show(text, className, meta) {
    const li = document.createElement("li");
    li.className = className;
    li.textContent = text;
    if (meta) {
      const span = document.createElement("div");
      span.className = "meta";
      span.textContent = meta;
      li.append(span);
    }
    $("messages").append(li);
    li.scrollIntoView({ block: "nearest" });
    return li;
  }

  client.on("state", (state) => {
    $("state").textContent = state;
    $("state").className = state;
    $("node").textContent = client.session ? `on ${client.session.nodeId} · partition ${client.session.partition}` : "";
    $("reconnects").textContent = `reconnects: ${client.reconnects}`;
  });
  client.on("message", (m) => {
    const li = show(m.body, "theirs", `${m.from ?? "server"} · ${m.id}`);
    li.dataset.id = m.id;
    li.dataset.from = m.from ?? "";
  });
  client.on("recovered", ({ recovered, reason }) => {
    $("recovered").textContent = recovered ? "recovered: yes" : `recovered: no (${reason})`;
    $("recovered").className = recovered ? "" : "lost";
    if (!recovered) show(`some messages could not be replayed (${reason}); reload the history`, "notice");
  });
  client.on("error", (e) => console.warn("rtc:", e.code, e.message));

  $("send").addEventListener("submit", async (event) => {
    event.preventDefault();
    const to = $("to").value.trim();
    const body = $("body").value;
    $("body").value = "";
    const li = show(body, "mine", `to ${to} · sending…`);
    try {
      const id = await client.send(to, body);
      li.querySelector(".meta").textContent = `to ${to} · ${id}`;
    } catch (e) {
      li.querySelector(".meta").textContent = `to ${to} · failed: ${e.code}`;
    }
  });

  client.connect();
}
