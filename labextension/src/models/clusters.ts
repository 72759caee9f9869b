/**
 * Every cluster this server knows, kept current by the events WebSocket: a state event
 * re-reads that cluster, progress, cost and lifetime events apply their numbers directly
 * (a lifetime event is the scheduler's clocks moved: the time left restarts from it, so
 * the views count down from the server's word, never from a stale reading). Nothing
 * polls. The list is read again whenever the socket (re)connects, so a server restart
 * leaves it right.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI } from '../request';
import { ClusterStatus, FINAL_STATES, ICluster, IClusterEvent, ILogRecord, ITimeLeft } from '../types';
import { EventStream } from './events';

/** A step of a cluster's start, as its events told it. */
export interface ITimelineEntry {
  kind: 'state' | 'progress';
  /** The status for state entries, the step (network, scheduler, workers) for progress. */
  name: string;
  time: number;
  data: { [key: string]: any };
}

/** Something a user should hear about a cluster (it stops soon, idle GPUs, budget). */
export interface INotice {
  clusterId: string;
  /** The cluster's name, as a user knows it. */
  cluster: string;
  /** What it is about (`shutdown-soon`, `budget`, …) and the situation, told once. */
  kind: string;
  key?: string;
  level: 'info' | 'warning' | 'error';
  message: string;
}

export class ClustersModel {
  constructor(readonly events: EventStream) {
    events.received.connect(this._onEvent, this);
    events.connectionChanged.connect(this._onConnection, this);
  }

  /** Emits whenever a cluster, the list or the connection changes. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Notifications the server sends about a cluster, each once. */
  get notified(): ISignal<this, INotice> {
    return this._notified;
  }

  /** Every cluster, newest first. */
  get clusters(): ICluster[] {
    return [...this._clusters.values()].sort((a, b) => b.created_at - a.created_at);
  }

  get live(): ICluster[] {
    return this.clusters.filter(c => !FINAL_STATES.has(c.status));
  }

  /** True once the list was read at least once. */
  get loaded(): boolean {
    return this._loaded;
  }

  /** Why the list could not be read, if it could not. */
  get error(): string | null {
    return this._error;
  }

  get connected(): boolean {
    return this.events.connected;
  }

  get(id: string): ICluster | undefined {
    return this._clusters.get(id);
  }

  /** The state and progress events seen for a cluster since this page loaded. */
  timeline(id: string): readonly ITimelineEntry[] {
    return this._timelines.get(id) ?? [];
  }

  /** When a cluster's time left was last read or told (ms), to count its clocks down. */
  readAt(id: string): number {
    return this._readAt.get(id) ?? Date.now();
  }

  /** A time of this browser's clock (ms) on the server's clock (epoch seconds), as
   * lifetime events tell the difference (their latency included): what compares with the
   * times the server puts in keys. */
  serverTime(browserTime: number): number {
    return browserTime / 1000 - this._clockOffset;
  }

  async refresh(): Promise<void> {
    try {
      const { clusters } = await requestAPI<{ clusters: ICluster[] }>('clusters');
      const now = Date.now();
      this._clusters = new Map(clusters.map(c => [c.id, c]));
      clusters.forEach(c => this._readAt.set(c.id, now));
      this._error = null;
      this._loaded = true;
    } catch (error) {
      this._error = (error as Error).message;
    }
    this._changed.emit();
  }

  async create(spec: { [field: string]: unknown }): Promise<ICluster> {
    const cluster = await requestAPI<ICluster>('clusters', { method: 'POST', body: spec });
    this._set(cluster);
    return cluster;
  }

  async scale(id: string, nWorkers: number): Promise<ICluster> {
    const cluster = await requestAPI<ICluster>(`clusters/${encodeURIComponent(id)}`, {
      method: 'PATCH',
      body: { n_workers: nWorkers }
    });
    this._set(cluster);
    return cluster;
  }

  async stop(id: string): Promise<ICluster> {
    const cluster = await requestAPI<ICluster>(`clusters/${encodeURIComponent(id)}`, { method: 'DELETE' });
    this._set(cluster);
    return cluster;
  }

  /** The last lines a cluster logged: what explains a failure. */
  async logTail(id: string, lines = 20): Promise<ILogRecord[]> {
    const { logs } = await requestAPI<{ logs: ILogRecord[] }>(`clusters/${encodeURIComponent(id)}/logs`, {
      query: { limit: lines }
    });
    return logs;
  }

  private _onConnection(_: EventStream, connected: boolean): void {
    if (connected) {
      void this.refresh();
    } else {
      this._changed.emit();
    }
  }

  private _onEvent(_: EventStream, event: IClusterEvent): void {
    if (event.kind === 'lifetime') {
      // Stamped when sent and never replayed: its time tells the two clocks apart.
      this._clockOffset = Date.now() / 1000 - event.time;
    }
    const id = event.cluster_id;
    const cluster = this._clusters.get(id);
    if (event.kind === 'state' || event.kind === 'progress') {
      const name = event.kind === 'state' ? event.data.status : event.data.step;
      const entries = this._timelines.get(id) ?? [];
      entries.push({ kind: event.kind, name, time: event.time, data: event.data });
      this._timelines.set(id, entries);
    }
    if (cluster === undefined) {
      if (event.kind !== 'log') {
        this._read(id);
      }
      return;
    }
    if (event.kind === 'state') {
      this._set({ ...cluster, status: event.data.status as ClusterStatus, message: event.data.message ?? null });
      this._read(id);
    } else if (event.kind === 'progress' && event.data.step === 'workers') {
      const { ready, launched, target } = event.data;
      this._set({ ...cluster, workers: { ready, launched, target } });
    } else if (event.kind === 'cost') {
      this._set({ ...cluster, cost: event.data as ICluster['cost'] });
    } else if (event.kind === 'lifetime') {
      this._readAt.set(id, Date.now());
      this._set({ ...cluster, time_left: event.data as ITimeLeft });
    } else if (event.kind === 'notification') {
      const { kind, key, level, message } = event.data;
      this._notified.emit({ clusterId: id, cluster: cluster.name, kind, key, level, message });
    } else {
      this._changed.emit();
    }
  }

  /** Read one cluster again; reads asked for while one runs coalesce into one more. */
  private _read(id: string): void {
    if (this._reading.has(id)) {
      this._reading.set(id, true);
      return;
    }
    this._reading.set(id, false);
    requestAPI<ICluster>(`clusters/${encodeURIComponent(id)}`)
      .then(cluster => {
        this._readAt.set(id, Date.now());
        this._set(cluster);
      })
      .catch(() => {
        // Gone or unreachable: the next (re)connection reads the whole list again.
      })
      .finally(() => {
        const again = this._reading.get(id);
        this._reading.delete(id);
        if (again) {
          this._read(id);
        }
      });
  }

  private _set(cluster: ICluster): void {
    this._clusters.set(cluster.id, cluster);
    this._changed.emit();
  }

  private _clusters = new Map<string, ICluster>();
  private _timelines = new Map<string, ITimelineEntry[]>();
  private _readAt = new Map<string, number>();
  private _clockOffset = 0;
  private _reading = new Map<string, boolean>();
  private _loaded = false;
  private _error: string | null = null;
  private _changed = new Signal<this, void>(this);
  private _notified = new Signal<this, INotice>(this);
}
