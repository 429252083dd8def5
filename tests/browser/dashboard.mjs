// Drives Debian's chromium through the admin dashboard as an operator would: log in, see the
// replicas, watch a deploy made from the CLI appear without a reload, roll back with the
// button, watch a canary appear and promote it with the button, log out. Run by
// tests/all/dashboard.rs, which starts the fleet and passes:
//   ADMIN_URL     the admin listener, e.g. http://127.0.0.1:PORT
//   ADMIN_TOKEN   the token to type into the login form (read from the environment, never a URL)
//   REPLICAS      how many replicas the page must show
//   APP           the deployed app, at v1
//   DEPLOY_CMD    a JSON array: the CLI command that deploys its v2
//   CANARY_CMD    a JSON array: the CLI command that deploys its v3 as a canary at 10%
//   SCREENSHOT    where to save a picture of the page (optional)
// Prints what it checked; exits non-zero with the reason on the first failure.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const { ADMIN_URL, ADMIN_TOKEN, APP, SCREENSHOT } = process.env;
const REPLICAS = Number(process.env.REPLICAS);
const DEPLOY_CMD = JSON.parse(process.env.DEPLOY_CMD);
const CANARY_CMD = JSON.parse(process.env.CANARY_CMD);
const WAIT = { timeout: 20_000 };

const step = (what) => console.log(`browser: ${what}`);

const profile = mkdtempSync(join(tmpdir(), "tabula-chromium-"));
// What this machine needs: no sandbox as root, and none of chromium's own network traffic
// (the machine reaches no outside host, and each attempt is refused).
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1100, height: 720 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  const external = [];
  page.on("request", (r) => {
    if (!r.url().startsWith(ADMIN_URL)) external.push(r.url());
  });
  page.on("dialog", (dialog) => dialog.accept());

  await page.goto(`${ADMIN_URL}/ui`);
  await page.locator("#login").waitFor({ state: "visible", ...WAIT });
  step("the login form is shown to a visitor without a login");
  await page.fill("#token", ADMIN_TOKEN);
  await page.click("#login button[type=submit]");
  await page.locator("#fleet").waitFor({ state: "visible", ...WAIT });
  step("logged in");

  // The token is gone from the page once exchanged: not in the DOM, not in storage, and the
  // cookie that stands for it is out of the scripts' reach.
  const leaks = await page.evaluate((token) => ({
    dom: document.documentElement.outerHTML.includes(token),
    field: document.querySelector("#token").value.length,
    storage: JSON.stringify(localStorage).includes(token) || JSON.stringify(sessionStorage).includes(token),
    cookie: document.cookie,
    url: location.href.includes(token),
  }), ADMIN_TOKEN);
  if (leaks.dom || leaks.field || leaks.storage || leaks.cookie !== "" || leaks.url) {
    throw new Error(`the token or the login is visible to the page: ${JSON.stringify(leaks)}`);
  }
  step("the token is not in the page, its storage, its URL, and the cookie is HttpOnly");

  const replicaRows = page.locator("#replicas tbody tr");
  await page.waitForFunction(
    ([n, app]) => {
      const rows = [...document.querySelectorAll("#replicas tbody tr")];
      return rows.length === n && rows.every((r) => r.querySelector(".serving").textContent.includes(`${app} v1`));
    },
    [REPLICAS, APP],
    WAIT,
  );
  step(`${await replicaRows.count()} replicas shown, each serving ${APP} v1`);
  const active = page.locator(`#apps tr[data-app="${APP}"] .active`);
  if ((await active.textContent()) !== "v1") throw new Error(`${APP} is not shown at v1`);
  await page.waitForFunction(
    (app) => document.querySelector(`#apps tr[data-app="${app}"] td.num`).textContent !== "0",
    APP,
    WAIT,
  );
  step(`${APP}'s request rate is shown`);

  // A mark that a reload would wipe out.
  await page.evaluate(() => (window.notReloaded = true));
  execFileSync(DEPLOY_CMD[0], DEPLOY_CMD.slice(1), { stdio: ["ignore", "inherit", "inherit"] });
  step("deployed v2 from the CLI");
  await page.waitForFunction(
    ([n, app]) => {
      const rows = [...document.querySelectorAll("#replicas tbody tr")];
      return document.querySelector(`#apps tr[data-app="${app}"] .active`).textContent === "v2"
        && rows.length === n && rows.every((r) => r.querySelector(".serving").textContent.includes(`${app} v2`));
    },
    [REPLICAS, APP],
    WAIT,
  );
  if (!(await page.evaluate(() => window.notReloaded === true))) throw new Error("the page was reloaded");
  step("the page shows v2 on the app and on every replica, without a reload");

  await page.click(`#apps tr[data-app="${APP}"] button.rollback`);
  await page.waitForFunction(
    ([n, app]) => {
      const rows = [...document.querySelectorAll("#replicas tbody tr")];
      return document.querySelector(`#apps tr[data-app="${app}"] .active`).textContent === "v1"
        && rows.length === n && rows.every((r) => r.querySelector(".serving").textContent.includes(`${app} v1`));
    },
    [REPLICAS, APP],
    WAIT,
  );
  const notice = await page.locator("#notice").textContent();
  if (!notice.includes(`${APP} v1 is active`)) throw new Error(`the rollback said: ${notice}`);
  step(`rolled back with the button: "${notice}"`);

  execFileSync(CANARY_CMD[0], CANARY_CMD.slice(1), { stdio: ["ignore", "inherit", "inherit"] });
  step("deployed v3 as a canary at 10% from the CLI");
  await page.waitForFunction(
    ([n, app]) => {
      const rows = [...document.querySelectorAll("#replicas tbody tr")];
      return document.querySelector(`#apps tr[data-app="${app}"] .canary`).textContent.startsWith("v3 at 10% (10)")
        && rows.length === n && rows.every((r) => r.querySelector(".serving").textContent.includes(`${app} v1 + v3 10%`));
    },
    [REPLICAS, APP],
    WAIT,
  );
  step(`the page shows the canary: "${await page.locator(`#apps tr[data-app="${APP}"] .canary`).textContent()}", and each replica's split`);
  await page.locator(`#history details[data-app="${APP}"] summary`).click();
  if (SCREENSHOT) {
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    step(`screenshot saved to ${SCREENSHOT}`);
  }
  await page.click(`#apps tr[data-app="${APP}"] button.promote`);
  await page.waitForFunction(
    ([n, app]) => {
      const rows = [...document.querySelectorAll("#replicas tbody tr")];
      return document.querySelector(`#apps tr[data-app="${app}"] .active`).textContent === "v3"
        && document.querySelector(`#apps tr[data-app="${app}"] .canary`).textContent === ""
        && document.querySelector(`#history details[data-app="${app}"] .last-canary`)?.textContent.includes("v3 promoted at 10%")
        && rows.length === n && rows.every((r) => r.querySelector(".serving").textContent.includes(`${app} v3`) && !r.querySelector(".serving").textContent.includes("+"));
    },
    [REPLICAS, APP],
    WAIT,
  );
  const promoted = await page.locator("#notice").textContent();
  if (!promoted.includes(`${APP} v3 is active`)) throw new Error(`the promotion said: ${promoted}`);
  step(`promoted with the button: "${promoted}"`);

  await page.click("#logout");
  await page.locator("#login").waitFor({ state: "visible", ...WAIT });
  const after = await page.evaluate(async () => (await fetch("/ui/api/state")).status);
  if (after !== 401) throw new Error(`after logging out the state answers ${after}, not 401`);
  step("logged out: the login form is back and the state answers 401");

  if (external.length) throw new Error(`the page fetched from elsewhere: ${external.join(", ")}`);
  step("the page fetched nothing from any other host");
  console.log("browser: all checks passed");
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
