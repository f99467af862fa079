// The chat demo and the operator console in a real browser (Debian's
// chromium, driven by playwright-core), on the real stack: the chaos
// scenario `browser` (scripts/lib/chaos.py) starts the stack and passes it
// in the environment:
//   RTC_WEB_URL          where clients/js is served (demo/ and dist/)
//   RTC_STACK_LBS        comma-separated load balancer base URLs
//   RTC_STACK_NODES      JSON [{id, admin}] of the socket nodes
//   RTC_STACK_ADMIN_TOKEN  the nodes' admin token (for the drain)
//   RTC_LB_ADMIN         a load balancer's admin address (the console)
//   RTC_BROWSER_OUT      where screenshots go
// Alice writes to Bob; Bob's node is drained (his state indicator goes
// connecting, then connected elsewhere); Bob's page is reloaded and resumes;
// Bob must see every message once, in order. Prints one JSON report line;
// exits 1 when a check fails.
import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const web = env("RTC_WEB_URL");
const lbs = env("RTC_STACK_LBS");
const nodes = JSON.parse(env("RTC_STACK_NODES"));
const adminToken = env("RTC_STACK_ADMIN_TOKEN");
const out = env("RTC_BROWSER_OUT");
mkdirSync(out, { recursive: true });

const checks = [];
const check = (ok, what) => {
  checks.push({ ok: Boolean(ok), what });
  console.error(`${ok ? "ok  " : "FAIL"} ${what}`);
};
const run = Date.now() % 1e6;
const alice = `alice-${run}`;
const bob = `bob-${run}`;
const chatUrl = (me, to) => `${web}/demo/?lb=${encodeURIComponent(lbs)}&user=${me}&to=${to}`;

const browser = await chromium.launch({ executablePath: process.env.RTC_CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
const pageErrors = [];
const pages = [];
try {
  const context = await browser.newContext();
  const open = async (me, to) => {
    const page = await context.newPage();
    pages.push([me, page]);
    page.on("pageerror", (e) => pageErrors.push(`${me}: ${e.message}`));
    page.on("console", (m) => console.error(`${me} console: ${m.text()}`));
    await page.goto(chatUrl(me, to));
    // Every state the indicator shows, in order.
    await page.evaluate(() => {
      window.__states = [document.getElementById("state").textContent];
      new MutationObserver(() => window.__states.push(document.getElementById("state").textContent)).observe(
        document.getElementById("state"), { childList: true, characterData: true, subtree: true });
    });
    await page.waitForSelector("#state.connected", { timeout: 15_000 });
    return page;
  };
  // Without a name the page asks for one; with one it chats.
  const picker = await context.newPage();
  await picker.goto(`${web}/demo/?lb=${encodeURIComponent(lbs)}`);
  check(await picker.isVisible("#pick") && await picker.isHidden("main"), "without a name, the page asks for one");
  await picker.fill("#name", `carol-${run}`);
  await picker.click("#pick button");
  await picker.waitForSelector("#state.connected", { timeout: 15_000 });
  check(await picker.isHidden("#pick") && (await picker.textContent("#me")) === `carol-${run}`, "a picked name connects");
  await picker.close();
  const a = await open(alice, bob);
  const b = await open(bob, alice);
  check(await b.isHidden("#pick"), "alice and bob connected, no name picker shown");

  let sent = 0;
  const say = async (n) => {
    for (let i = 0; i < n; i++) {
      sent += 1;
      await a.fill("#body", `hello ${sent}`);
      await a.click("#send button");
    }
  };
  /** The numbers Bob's page shows, in order. */
  const bobSaw = (page) => page.$$eval("#messages li.theirs", (lis) => lis.map((li) => Number(li.firstChild.textContent.split(" ")[1])));

  await say(5);
  await b.waitForFunction((n) => document.querySelectorAll("#messages li.theirs").length >= n, 5, { timeout: 10_000 });
  await b.screenshot({ path: join(out, "bob-before-drain.png") });

  // Drain Bob's node while Alice keeps writing.
  const bobNode = await b.evaluate(() => window.rtc.session.nodeId);
  const node = nodes.find((n) => n.id === bobNode);
  check(node, `bob is on a known node (${bobNode})`);
  const drained = await fetch(`http://${node.admin}/drain`, { method: "POST", headers: { authorization: `Bearer ${adminToken}` } });
  check(drained.ok, `drain of ${bobNode} accepted (${drained.status})`);
  await say(10);
  await b.waitForFunction((old) => window.rtc.session && window.rtc.session.nodeId !== old, bobNode, { timeout: 15_000 });
  await b.waitForSelector("#state.connected");
  const states = await b.evaluate(() => window.__states);
  const moved = states.indexOf("connecting", states.indexOf("connected"));
  check(moved > 0 && states.indexOf("connected", moved) > moved, `bob's indicator: ${states.join(" → ")}`);
  const newNode = await b.evaluate(() => window.rtc.session.nodeId);
  check(newNode !== bobNode, `bob moved from ${bobNode} to ${newNode}`);
  await b.waitForFunction((n) => document.querySelectorAll("#messages li.theirs").length >= n, sent, { timeout: 10_000 });
  const beforeReload = await bobSaw(b);
  check(JSON.stringify(beforeReload) === JSON.stringify(Array.from({ length: sent }, (_, i) => i + 1)),
    `bob saw 1..${sent} once, in order, through the drain: ${beforeReload.join(",")}`);
  await b.screenshot({ path: join(out, "bob-after-drain.png") });

  // Bob reloads while Alice writes: the page resumes from its stored id.
  const firstAfter = sent + 1;
  const reload = b.reload();
  await say(5);
  await reload;
  await b.waitForSelector("#state.connected", { timeout: 15_000 });
  await b.waitForFunction((n) => document.querySelectorAll("#messages li.theirs").length >= n, sent - firstAfter + 1, { timeout: 10_000 });
  await new Promise((r) => setTimeout(r, 500));
  const afterReload = await bobSaw(b);
  check(JSON.stringify(afterReload) === JSON.stringify(Array.from({ length: sent - firstAfter + 1 }, (_, i) => firstAfter + i)),
    `after the reload bob saw exactly ${firstAfter}..${sent}: ${afterReload.join(",")}`);
  const aliceAcked = await a.$$eval("#messages li.mine .meta", (m) => m.filter((x) => /\d+:\d+$/.test(x.textContent)).length);
  check(aliceAcked === sent, `alice's ${sent} sends all acknowledged (${aliceAcked})`);
  await b.screenshot({ path: join(out, "bob-after-reload.png") });
  await a.screenshot({ path: join(out, "alice.png") });

  // The operator console renders the fleet.
  const consolePage = await context.newPage();
  consolePage.on("pageerror", (e) => pageErrors.push(`console: ${e.message}`));
  await consolePage.goto(`http://${env("RTC_LB_ADMIN")}/ui/`);
  await consolePage.waitForFunction(() => document.querySelectorAll("#nodes tbody tr").length > 0, null, { timeout: 10_000 });
  const shown = await consolePage.$$eval("#nodes tbody tr td:first-child", (tds) => tds.map((td) => td.textContent));
  check(nodes.every((n) => shown.includes(n.id)), `the console lists every node: ${shown.join(", ")}`);
  const map = await consolePage.$$eval("#map div", (cells) => cells.map((c) => c.title));
  check(map.length > 0 && map.every((t) => !t.endsWith("nobody")), `the console's partition map: ${map.length} partitions, each owned (${map[0]} …)`);
  const actions = await consolePage.$$eval("#decisions tbody tr td:nth-child(2)", (tds) => tds.map((td) => td.textContent));
  check(actions.length > 0 && actions.every((a) => /^(hold|scale_out|scale_in)$/.test(a)), `the console's decisions: ${actions.join(", ")}`);
  const summary = await consolePage.textContent("#summary");
  check(/leader epoch: \d+/.test(summary) && /actual → desired\): \d+ → \d+/.test(summary), `the console's summary: ${summary}`);
  const status = await consolePage.textContent("#status");
  check(/leader|follower/.test(status) && /assignment epoch \d+/.test(status), `the console's status line: ${status}`);
  await consolePage.screenshot({ path: join(out, "console.png"), fullPage: true });
  check(pageErrors.length === 0, `no page errors: ${pageErrors.slice(0, 3).join("; ")}`);
} catch (e) {
  check(false, `the browser run: ${e.message}`);
  for (const [name, page] of pages) await page.screenshot({ path: join(out, `failed-${name}.png`) }).catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok: checks.every((c) => c.ok), checks }));
process.exit(checks.every((c) => c.ok) ? 0 : 1);
