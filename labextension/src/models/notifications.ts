/**
 * What the server told about each cluster (it stops soon, idle GPUs, budget, a zone out
 * of capacity): read once per cluster from `GET /clusters/{id}/notifications` when a view
 * first asks, then kept current by the events socket's "notification" events. Each
 * notification has a key naming its situation, sent once: the key merges what the read and
 * the events both bring.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI } from '../request';
import { IClusterEvent, INotification } from '../types';
import { EventStream } from './events';

export class NotificationsModel {
  constructor(readonly events: EventStream) {
    events.received.connect(this._onEvent, this);
    events.connectionChanged.connect((_, connected) => {
      if (connected) {
        // Read again after a reconnection: what was missed meanwhile is in the list.
        [...this._byCluster.keys()].forEach(id => void this.load(id));
      }
    });
  }

  /** Emits whenever a cluster's list changes. */
  get changed(): ISignal<this, string> {
    return this._changed;
  }

  /** Start following a cluster: read its notifications once; events add the next ones. */
  watch(id: string): void {
    if (!this._byCluster.has(id)) {
      this._byCluster.set(id, new Map());
      void this.load(id);
    }
  }

  /** A cluster's notifications, oldest first (none until it is watched and read). */
  list(id: string): readonly INotification[] {
    return [...(this._byCluster.get(id)?.values() ?? [])].sort((a, b) => a.time - b.time);
  }

  count(id: string): number {
    return this.list(id).length;
  }

  async load(id: string): Promise<void> {
    try {
      const { notifications } = await requestAPI<{ notifications: INotification[] }>(
        `clusters/${encodeURIComponent(id)}/notifications`
      );
      notifications.forEach(n => this._add(id, n));
      this._changed.emit(id);
    } catch {
      // Gone or unreachable: the next reconnection reads again.
    }
  }

  private _onEvent(_: EventStream, event: IClusterEvent): void {
    if (event.kind !== 'notification' || !this._byCluster.has(event.cluster_id)) {
      return; // a cluster no view asked about: read in full when one does
    }
    this._add(event.cluster_id, { time: event.time, ...(event.data as Omit<INotification, 'time'>) });
    this._changed.emit(event.cluster_id);
  }

  private _add(id: string, notification: INotification): void {
    let known = this._byCluster.get(id);
    if (!known) {
      known = new Map();
      this._byCluster.set(id, known);
    }
    known.set(notification.key ?? `${notification.time}:${notification.message}`, notification);
  }

  private _byCluster = new Map<string, Map<string, INotification>>();
  private _changed = new Signal<this, string>(this);
}
