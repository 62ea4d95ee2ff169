// Figures over time from the aggregate endpoints: the window is cut into whole-minute buckets
// and /api/v1/services is asked once per bucket (the rollups answer each in milliseconds).
import { api, pool } from "./api.js";

const MINUTE = 60000;

/** Whole-minute buckets covering the window (epoch ms): at most about `max` of them. */
export function buckets(window, max = 12) {
  const span = window.end - window.start;
  const size = Math.max(MINUTE, Math.ceil(span / max / MINUTE) * MINUTE);
  const out = [];
  for (let t = Math.floor(window.start / MINUTE) * MINUTE; t < window.end; t += size) {
    out.push({ start: t, end: Math.min(t + size, window.end) });
  }
  return out;
}

/**
 * Per service, its /services row in each bucket (null where it had no calls):
 * {times: [bucket start ms], byService: Map(name -> [row|null])}.
 */
export async function serviceSeries(window, { max = 12, kind } = {}) {
  const cuts = buckets(window, max);
  const iso = (ms) => new Date(ms).toISOString();
  const pages = await pool(cuts.map((b) => () => api("/api/v1/services", { start: iso(b.start), end: iso(b.end), kind })));
  const byService = new Map();
  pages.forEach((page, i) => {
    for (const row of page.services) {
      if (!byService.has(row.service)) byService.set(row.service, new Array(cuts.length).fill(null));
      byService.get(row.service)[i] = row.calls ? row : null;
    }
  });
  return { times: cuts.map((b) => b.start), byService };
}
