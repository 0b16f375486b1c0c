// A small inline SVG line chart of a numeric series.
const NS = "http://www.w3.org/2000/svg";

/** The polyline points of a sparkline for `series` ([[ts, value], ...]), or null if too short. */
export function sparklinePoints(series, width = 90, height = 22) {
  if (!series || series.length < 2) return null;
  const values = series.map((point) => point[1]);
  const min = Math.min(...values);
  const max = Math.max(...values);
  const span = max - min || 1;
  const step = width / (values.length - 1);
  return values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - ((v - min) / span) * (height - 4)).toFixed(1)}`).join(" ");
}

/**
 * Return an <svg> sparkline for `series`, or null if too short. Given the `svg` drawn
 * before, its line is moved instead (no new nodes: values change many times a second).
 */
export function sparkline(series, width = 90, height = 22, svg = null) {
  const points = sparklinePoints(series, width, height);
  if (points === null) return null;
  const line = svg && svg.querySelector("polyline");
  if (line) {
    line.setAttribute("points", points);
    return svg;
  }
  const node = document.createElementNS(NS, "svg");
  node.setAttribute("class", "jce-sparkline");
  node.setAttribute("width", String(width));
  node.setAttribute("height", String(height));
  node.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const polyline = document.createElementNS(NS, "polyline");
  polyline.setAttribute("points", points);
  polyline.setAttribute("fill", "none");
  polyline.setAttribute("stroke-width", "1.5");
  node.appendChild(polyline);
  return node;
}
