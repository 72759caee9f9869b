/**
 * One cluster's logs through `GET /clusters/{id}/logs`, whatever the backend keeps them
 * in (local files, CloudWatch, Cloud Logging): the newest page under the filters, older
 * pages on demand, and in follow mode the lines after the last one shown. The server has
 * no log stream to push, so following asks again every few seconds while the viewer is
 * visible.
 */
import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { logSource } from '../format';
import { requestAPI } from '../request';
import { ILogRecord } from '../types';

export interface ILogFilters {
  /** An instance id, a role (scheduler, worker) or role-instance; '' for all. */
  instance: string;
  /** The minimum level; '' for all. */
  level: string;
  /** Text the message must contain. */
  q: string;
}

export interface ILogsOptions {
  pageSize: number;
  followInterval: number;
  /** Whether the cluster may still write logs (following stops once it cannot). */
  isLive: () => boolean;
}

function key(r: ILogRecord): string {
  return `${r.time}|${r.instance}|${r.message}`;
}

export class LogsModel implements IDisposable {
  constructor(readonly clusterId: string, private _options: ILogsOptions) {
    this._limit = _options.pageSize;
    this._poll = new Poll({
      auto: false,
      factory: () => this._fetchNew(),
      frequency: { interval: _options.followInterval * 1000, backoff: true, max: 60_000 },
      name: `coiled-lab:logs:${clusterId}`,
      standby: 'when-hidden'
    });
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get records(): readonly ILogRecord[] {
    return this._records;
  }

  /** Every instance seen (as the viewer names them), for the instance filter. */
  get instances(): string[] {
    return [...this._instances].sort();
  }

  get filters(): Readonly<ILogFilters> {
    return this._filters;
  }

  get follow(): boolean {
    return this._follow;
  }

  get loading(): boolean {
    return this._loading;
  }

  get error(): string | null {
    return this._error;
  }

  /** Whether older lines may exist beyond the page shown. */
  get hasOlder(): boolean {
    return this._records.length >= this._limit;
  }

  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  /** Whether the cluster may still write lines. */
  isLive(): boolean {
    return this._options.isLive();
  }

  /** Read the newest page under the current filters. */
  async reload(): Promise<void> {
    this._loading = true;
    this._changed.emit();
    const call = ++this._call;
    try {
      const records = await this._get({ limit: this._limit });
      if (call === this._call) {
        this._records = records;
        this._boundary = new Set(records.map(key));
        this._error = null;
      }
    } catch (error) {
      if (call === this._call) {
        this._error = (error as Error).message;
      }
    }
    this._loading = false;
    this._changed.emit();
  }

  setFilters(filters: Partial<ILogFilters>): void {
    this._filters = { ...this._filters, ...filters };
    this._limit = this._options.pageSize;
    void this.reload();
  }

  loadOlder(): Promise<void> {
    this._limit += this._options.pageSize;
    return this.reload();
  }

  setFollow(follow: boolean): void {
    this._follow = follow;
    if (follow) {
      void this._poll.start();
    } else {
      void this._poll.stop();
    }
    this._changed.emit();
  }

  /** Everything shown, one formatted line each, for the clipboard. */
  text(format: (r: ILogRecord) => string): string {
    return this._records.map(format).join('\n');
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    Signal.clearData(this);
  }

  private async _fetchNew(): Promise<void> {
    const last = this._records[this._records.length - 1];
    if (!last) {
      await this.reload();
    } else {
      const call = this._call;
      const records = await this._get({ since: last.time, limit: 0 });
      if (call !== this._call) {
        return;
      }
      // Lines sharing the last time stamp come again: keep those not shown yet.
      const fresh = records.filter(r => r.time > last.time || !this._boundary.has(key(r)));
      if (fresh.length) {
        const newest = fresh[fresh.length - 1].time;
        this._boundary = new Set(
          [...this._records, ...fresh].filter(r => r.time === newest).map(key)
        );
        this._records = [...this._records, ...fresh];
        this._changed.emit();
      }
    }
    if (!this.isLive()) {
      this.setFollow(false);
    }
  }

  private async _get(page: { since?: number; limit: number }): Promise<ILogRecord[]> {
    const { logs } = await requestAPI<{ logs: ILogRecord[] }>(
      `clusters/${encodeURIComponent(this.clusterId)}/logs`,
      { query: { ...this._filters, ...page } }
    );
    logs.forEach(r => this._instances.add(logSource(r)));
    return logs;
  }

  private _poll: Poll;
  private _records: ILogRecord[] = [];
  private _boundary = new Set<string>();
  private _instances = new Set<string>();
  private _filters: ILogFilters = { instance: '', level: '', q: '' };
  private _limit: number;
  private _follow = false;
  private _loading = false;
  private _error: string | null = null;
  private _call = 0;
  private _changed = new Signal<this, void>(this);
}
