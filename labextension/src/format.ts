/**
 * How numbers look in the sidebar, the form and the log viewer.
 */
import { ICluster, ICost, ILogRecord } from './types';

export function money(amount: number, currency = 'USD'): string {
  const symbol = currency === 'USD' ? '$' : `${currency} `;
  if (amount !== 0 && Math.abs(amount) < 0.001) {
    // A fraction of a tenth of a cent (a spot price can be): two significant digits, not "0.000".
    return `${symbol}${amount.toPrecision(2)}`;
  }
  const digits = amount !== 0 && Math.abs(amount) < 1 ? 3 : 2;
  return `${symbol}${amount.toFixed(digits)}`;
}

export function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 120) {
    return `${s}s`;
  }
  if (s < 7200) {
    return `${Math.floor(s / 60)}m`;
  }
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** "1 line", "2 lines": a count with its noun. */
export function plural(n: number, noun: string, nouns = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : nouns}`;
}

export function bytes(n: number): string {
  const gib = n / 2 ** 30;
  return gib >= 1 ? `${gib >= 10 ? gib.toFixed(0) : gib.toFixed(1)} GiB` : `${(n / 2 ** 20).toFixed(0)} MiB`;
}

/** The cost so far, brought up to `now` (ms) at the cluster's current $/hour; null when unknown. */
export function accrued(cost: ICost, live: boolean, now: number): number | null {
  if (cost.accrued === null || cost.per_hour === null) {
    return null;
  }
  const elapsed = live ? Math.max(0, now / 1000 - cost.as_of) : 0;
  return cost.accrued + (cost.per_hour * elapsed) / 3600;
}

/** What a stopped cluster cost, or "cost unknown" when a price was not known. */
export function costSoFar(cost: ICost): string {
  const total = accrued(cost, false, 0);
  return total === null ? 'cost unknown' : money(total, cost.currency);
}

/** "$1.23/h · $4.56 so far", or "cost unknown" when a price is not known. */
export function costText(cost: ICost, live: boolean, now: number): string {
  const soFar = accrued(cost, live, now);
  if (soFar === null || cost.per_hour === null) {
    return 'cost unknown';
  }
  return `${money(cost.per_hour, cost.currency)}/h · ${money(soFar, cost.currency)} so far`;
}

const CLOCK_LABELS: Record<string, string> = {
  idle_timeout: 'idle',
  no_client_timeout: 'no client',
  max_lifetime: 'lifetime'
};

/** The soonest of a cluster's timeouts, e.g. "idle 18m", counted down since it was read. */
export function stopsIn(cluster: ICluster, readAt: number, now: number): string | null {
  const left = Object.entries(cluster.time_left ?? {}).filter(([, v]) => v !== null) as [string, number][];
  if (!left.length) {
    return null;
  }
  const [field, seconds] = left.reduce((a, b) => (b[1] < a[1] ? b : a));
  return `${CLOCK_LABELS[field] ?? field} ${duration(seconds - (now - readAt) / 1000)}`;
}

/** A log line's time of day in UTC, marked Z, as the CLI and the magic print it. */
export function clock(time: number): string {
  return new Date(time * 1000).toISOString().slice(11, 23) + 'Z';
}

export function where(cluster: ICluster): string {
  if (cluster.backend === 'local') {
    return 'this machine';
  }
  const { region, zone } = cluster.spec;
  return [region, zone].filter(Boolean).join(' / ') || 'default region';
}

/** Where a log line comes from: the role, and the instance when it is not named after it. */
export function logSource(r: ILogRecord): string {
  return r.instance === r.role ? r.role : `${r.role}-${r.instance}`;
}

export function logLine(r: ILogRecord): string {
  return `${clock(r.time)} ${logSource(r)} ${r.level.padEnd(7)} ${r.message}`;
}
