// A small inline SVG line chart of a numeric series.
const NS = "http://www.w3.org/2000/svg";

/** Return an <svg> sparkline for `series` ([[ts, value], ...]), or null if too short. */
export function sparkline(series, width = 90, height = 22) {
  if (!series || series.length < 2) return null;
  const values = series.map((point) => point[1]);
  const min = Math.min(...values);
  const max = Math.max(...values);
  const span = max - min || 1;
  const step = width / (values.length - 1);
  const points = values
    .map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - ((v - min) / span) * (height - 4)).toFixed(1)}`)
    .join(" ");
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "jce-sparkline");
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", points);
  line.setAttribute("fill", "none");
  line.setAttribute("stroke-width", "1.5");
  svg.appendChild(line);
  return svg;
}
