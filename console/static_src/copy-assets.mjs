// Copies the files the console page loads from node_modules into the
// git-ignored console/static/console/vendor/, where Django's static finders
// (and collectstatic) pick them up. Run after `npm ci` in this directory.
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const target = join(here, "..", "static", "console", "vendor");
const files = [
  "@xterm/xterm/lib/xterm.js",
  "@xterm/xterm/css/xterm.css",
  "@xterm/addon-fit/lib/addon-fit.js",
];

mkdirSync(target, { recursive: true });
for (const file of files) {
  const name = file.split("/").pop();
  copyFileSync(join(here, "node_modules", file), join(target, name));
  console.log(`console assets: ${name}`);
}
