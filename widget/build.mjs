// Build the widget bundle: `node build.mjs [outdir]` (default: the Python package's static/).
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = resolve(process.argv[2] || join(here, "..", "jupyter_chat_ext", "static"));
mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: [join(here, "src", "index.js")],
  bundle: true,
  format: "esm",
  minify: true,
  target: "es2020",
  legalComments: "none",
  outfile: join(outdir, "widget.js"),
  logLevel: "warning",
});
copyFileSync(join(here, "src", "widget.css"), join(outdir, "widget.css"));
