/**
 * Cloud credentials as the server shows them: where they come from, never a secret.
 * Secrets only travel the other way (`PUT /credentials`); nothing sent is kept here.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { ApiError, requestAPI } from '../request';
import { ICredentialsStatus } from '../types';

export type Provider = 'aws' | 'gcp';

export class CredentialsModel {
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get status(): ICredentialsStatus | null {
    return this._status;
  }

  get error(): string | null {
    return this._error;
  }

  /** Errors of the last write of this provider's credentials, by field. */
  errorsOf(provider: Provider): ReadonlyMap<string, string> {
    return provider === this._errorsOf ? this._errors : new Map();
  }

  async refresh(): Promise<void> {
    try {
      this._status = await requestAPI<ICredentialsStatus>('credentials');
      this._error = null;
    } catch (error) {
      this._error = (error as Error).message;
    }
    this._changed.emit();
  }

  /** Store one provider's credentials (or forget them with `{clear: true}`); true when stored. */
  async write(provider: Provider, fields: Record<string, unknown>): Promise<boolean> {
    this._errors = new Map();
    this._errorsOf = provider;
    try {
      this._status = await requestAPI<ICredentialsStatus>('credentials', {
        method: 'PUT',
        body: { provider, ...fields }
      });
      this._error = null;
      return true;
    } catch (error) {
      const byField = error instanceof ApiError ? error.byField() : new Map<string, string>();
      this._errors = byField;
      this._error = byField.size ? null : (error as Error).message;
      return false;
    } finally {
      this._changed.emit();
    }
  }

  private _status: ICredentialsStatus | null = null;
  private _error: string | null = null;
  private _errors: Map<string, string> = new Map();
  private _errorsOf: Provider | null = null;
  private _changed = new Signal<this, void>(this);
}
