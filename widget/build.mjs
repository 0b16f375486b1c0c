// Build the widget bundle: `node build.mjs [outdir]` (default: the Python package's static/).
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
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

// The stylesheet: ours, then KaTeX's, with the fonts most math uses inlined (no network
// at run time: letters, symbols, blackboard bold, big delimiters); the other KaTeX fonts
// (bold, italic text, calligraphic, fraktur, script, sans-serif, typewriter) are left
// out to keep the widget small (~120 kB less): the browser's own fonts stand in for them.
const KATEX_FONTS = new Set([
  "KaTeX_AMS-Regular", "KaTeX_Main-Regular", "KaTeX_Math-Italic",
  "KaTeX_Size1-Regular", "KaTeX_Size2-Regular", "KaTeX_Size3-Regular", "KaTeX_Size4-Regular",
]);
const katexDir = join(here, "node_modules", "katex", "dist");
const katexCss = readFileSync(join(katexDir, "katex.min.css"), "utf8").replace(/@font-face\{[^}]*\}/g, (rule) => {
  const font = /url\(fonts\/([\w-]+)\.woff2\)/.exec(rule)[1];
  if (!KATEX_FONTS.has(font)) return "";
  const data = readFileSync(join(katexDir, "fonts", `${font}.woff2`)).toString("base64");
  return rule.replace(/src:[^;}]*/, `src:url(data:font/woff2;base64,${data}) format("woff2")`);
});
const css = readFileSync(join(here, "src", "widget.css"), "utf8");
writeFileSync(join(outdir, "widget.css"), `${css}\n/* KaTeX ${JSON.parse(readFileSync(join(katexDir, "..", "package.json"), "utf8")).version} (MIT) */\n${katexCss}\n`);
