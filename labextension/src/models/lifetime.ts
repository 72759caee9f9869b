/**
 * Whether a "the cluster stops in …" notification still holds. The server sends it once,
 * when a timeout's countdown nears its end; work or a client arriving then stops or
 * restarts the countdown, and the server says so only through the cluster's new
 * `time_left` (a `lifetime` event). The notification's key names the countdown it is
 * about, `<timeout field>:<epoch second the countdown began>`: the warning holds while
 * the cluster's current countdown on that field is the same one.
 */
import { FINAL_STATES, ICluster, ITimeLeft } from '../types';

/** The kind of notification a timeout's coming end sends. */
export const SHUTDOWN_SOON = 'shutdown-soon';

/** How far apart (s) two readings of one countdown's start may be: the key is rounded to
 * the second, and a reading's time is when its answer arrived. */
const SAME_COUNTDOWN = 5;

export interface INoticeKey {
  kind: string;
  key?: string;
}

/** False for a stopping warning whose countdown stopped, restarted or ended with the
 * cluster; true for every other notification. `readAt`: when `time_left` was read, in
 * epoch seconds of the server's clock (the key's time is the server's; a browser's clock
 * may be minutes off). */
export function stillHolds(notice: INoticeKey, cluster: ICluster | undefined, readAt: number): boolean {
  if (notice.kind !== SHUTDOWN_SOON || !notice.key) {
    return true;
  }
  if (!cluster || FINAL_STATES.has(cluster.status)) {
    return false;
  }
  const [field, began] = notice.key.split(':');
  const left = cluster.time_left?.[field as keyof ITimeLeft];
  const timeout = Number(cluster.spec[field]);
  if (left === null || left === undefined) {
    return false; // not counting any more: work runs, or a client is connected
  }
  if (!timeout) {
    return true; // the countdown's length is unknown here: trust the server's word
  }
  const beganNow = readAt + left - timeout;
  return Math.abs(beganNow - Number(began)) < SAME_COUNTDOWN;
}
