/**
 * Who is asking (`GET /me`) and what everyone did (`GET /audit`, admins only): the
 * activity log of creates, scales, stops and refusals, newest first, with the user, the
 * cluster and its estimated $/hour at that moment. Kept current by the events socket: a
 * cluster's change of state brings the rows written since the newest one shown.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { ApiError, requestAPI } from '../request';
import { IAuditEntry, IMe } from '../types';
import { EventStream } from './events';

const PAGE = 500;

export interface IActivityFilter {
  user?: string;
  cluster?: string;
}

export class ActivityModel {
  constructor(events: EventStream) {
    events.received.connect((_, event) => {
      if (this._open && this._entries !== null && event.kind === 'state' && !this._fetching) {
        void this._fetchNewer();
      }
    });
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Who this page acts for; null until known (or when the server predates `/me`). */
  get me(): IMe | null {
    return this._me;
  }

  /** Newest first; null before the first load. */
  get entries(): readonly IAuditEntry[] | null {
    return this._entries;
  }

  get error(): string | null {
    return this._error;
  }

  get filter(): IActivityFilter {
    return this._filter;
  }

  async loadMe(): Promise<void> {
    try {
      this._me = await requestAPI<IMe>('me');
    } catch {
      this._me = null; // no admin view then; the sidebar works as before
    }
    this._changed.emit();
  }

  /** The panel is shown (true) or closed: only a shown panel follows the events. */
  setOpen(open: boolean): void {
    this._open = open;
  }

  async refresh(filter: IActivityFilter = this._filter): Promise<void> {
    this._filter = filter;
    try {
      const query = { ...filter, limit: PAGE, newest: true };
      const { audit } = await requestAPI<{ audit: IAuditEntry[] }>('audit', { query });
      this._entries = [...audit].reverse();
      this._error = null;
    } catch (error) {
      this._entries = null;
      this._error =
        error instanceof ApiError && error.status === 403
          ? 'Only admins see the activity log.'
          : `Cannot read the activity log: ${(error as Error).message}`;
    }
    this._changed.emit();
  }

  private async _fetchNewer(): Promise<void> {
    const newest = this._entries?.[0]?.seq ?? 0;
    this._fetching = true;
    try {
      const query = { ...this._filter, after: newest, limit: PAGE };
      const { audit } = await requestAPI<{ audit: IAuditEntry[] }>('audit', { query });
      if (audit.length && this._entries) {
        this._entries = [...[...audit].reverse(), ...this._entries];
        this._changed.emit();
      }
    } catch {
      // the next event tries again; a refresh shows the error
    } finally {
      this._fetching = false;
    }
  }

  private _changed = new Signal<this, void>(this);
  private _me: IMe | null = null;
  private _entries: IAuditEntry[] | null = null;
  private _error: string | null = null;
  private _filter: IActivityFilter = {};
  private _open = false;
  private _fetching = false;
}
