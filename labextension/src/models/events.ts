/**
 * The events WebSocket: one connection per page, reopened with backoff when it drops
 * (a server restart, a network blip), asking the server to replay what was missed
 * (`?after=<last sequence number seen>`).
 */
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { eventsURL } from '../request';
import { IClusterEvent } from '../types';

export class EventStream {
  constructor() {
    // Poll serves only for its backoff: one "tick" lasts as long as a connection does.
    new Poll({
      auto: true,
      factory: () => this._connection(),
      frequency: { interval: 1000, backoff: 2, max: 10_000 },
      name: 'coiled-lab:events',
      standby: 'never'
    });
  }

  /** Every event, in order, replayed ones included. */
  get received(): ISignal<this, IClusterEvent> {
    return this._received;
  }

  /** Emits true when a connection opens and false when it drops. */
  get connectionChanged(): ISignal<this, boolean> {
    return this._connectionChanged;
  }

  get connected(): boolean {
    return this._connected;
  }

  /** Resolves when an open connection closes; rejects when one fails to open (backoff). */
  private _connection(): Promise<void> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(eventsURL(this._lastSeq));
      let opened = false;
      socket.onopen = () => {
        opened = true;
        this._setConnected(true);
      };
      socket.onmessage = message => {
        const event = JSON.parse(message.data) as IClusterEvent;
        if (event.seq !== null) {
          this._lastSeq = Math.max(this._lastSeq ?? 0, event.seq);
        }
        this._received.emit(event);
      };
      socket.onclose = () => {
        this._setConnected(false);
        if (opened) {
          resolve();
        } else {
          reject(new Error('the coiled-lab events socket did not open'));
        }
      };
    });
  }

  private _setConnected(value: boolean): void {
    if (value !== this._connected) {
      this._connected = value;
      this._connectionChanged.emit(value);
    }
  }

  private _lastSeq: number | null = null;
  private _connected = false;
  private _received = new Signal<this, IClusterEvent>(this);
  private _connectionChanged = new Signal<this, boolean>(this);
}
