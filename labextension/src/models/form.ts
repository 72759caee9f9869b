/**
 * The new-cluster form's state, apart from its view. What the form shows comes from the
 * server's schema (`GET schema?backend=`: ClusterSpec's JSON schema with the server's
 * defaults, limits and the forms' UI table, `coiled_lab/schema.py`), the one the notebook's
 * `ClusterForm` is built from too: fields, labels, order, bounds, choices and which fields
 * each backend shows. Values: the server's defaults, then the lab settings, then what the
 * user typed. Also the catalog for the chosen backend and region, a debounced estimate, the
 * errors per field (out of the schema's bounds here, else as the server names them) and, on
 * the local backend, warnings for a worker bigger than this machine. Only fields the user
 * set (or the lab settings set) are sent: the server fills in the rest from its own config.
 * A cloud cluster that syncs packages gets the environment of a notebook's kernel
 * (`software`), sent on Create.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { bytes } from '../format';
import { ApiError, requestAPI } from '../request';
import { ICatalog, ICluster, IEstimate, IReach } from '../types';
import { ClustersModel } from './clusters';
import { SoftwareModel } from './software';

export type FieldValue = string | string[] | boolean;
export type Field = string;
export type Sizing = 'types' | 'resources';
/** What kind of input a field is (`FieldUI.widget` in coiled_lab/schema.py). */
export type Widget = 'text' | 'choice' | 'integer' | 'size' | 'duration' | 'pairs' | 'types' | 'region' | 'zone' | 'check';

/** One ClusterSpec property as the server serves it. */
export interface IFieldSchema {
  title: string;
  description?: string;
  default?: unknown;
  enum?: string[];
  minimum?: number;
  maximum?: number;
  /** The setting that sets a bound, e.g. coiled-lab.local.max-workers. */
  'x-limit'?: string;
  'x-ui'?: {
    order: number;
    group: 'basic' | 'advanced';
    backends: string[];
    widget: Widget;
    placeholder: string;
    sizing: Sizing | null;
  };
}

/** The form's schema for one backend. */
export interface IFormSchema {
  properties: Record<string, IFieldSchema>;
  'x-backend': string;
  /** The fields this backend's form shows, in order. */
  'x-form': string[];
  /** This machine's vCPUs and memory (bytes), on the local backend. */
  'x-machine'?: { cpu: number; memory: number };
}

const ALWAYS_SENT: ReadonlySet<Field> = new Set(['backend', 'n_workers']);
const ESTIMATE_DELAY = 400;
/** Where the form shows errors about the environment sent (the software line). */
export const ENVIRONMENT = 'environment';
const WHOLE = /^-?\d+$/;
const UNITS: Record<string, number> = {
  '': 1, b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
  ki: 2 ** 10, kib: 2 ** 10, mi: 2 ** 20, mib: 2 ** 20, gi: 2 ** 30, gib: 2 ** 30, ti: 2 ** 40, tib: 2 ** 40
};

/** A config or settings value as the form shows it. */
function display(value: unknown): FieldValue {
  if (value === null || value === undefined) {
    return '';
  }
  if (typeof value === 'boolean') {
    return value;
  }
  if (Array.isArray(value)) {
    return value.map(String);
  }
  if (typeof value === 'object') {
    return Object.entries(value as Record<string, unknown>)
      .map(([k, v]) => `${k}=${v}`)
      .join(', ');
  }
  return String(value);
}

/** Bytes from "16 GiB", "8GB", "512 MiB" (dask's spelling); null when it is not a size
 * (the server's error then says what is). Only for the local form's warning. */
function parseBytes(text: string): number | null {
  const match = /^([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)$/i.exec(text.trim());
  const unit = match ? UNITS[match[2].toLowerCase()] : undefined;
  return match && unit !== undefined ? Number(match[1]) * unit : null;
}

/** The forms' one-line spelling of tags: `team=geo, project=x` (as `--tag KEY=VALUE`). */
export function parseTags(text: string, field: Field = 'tags'): Record<string, string> {
  const tags: Record<string, string> = {};
  for (const pair of text.split(',').map(p => p.trim()).filter(Boolean)) {
    const at = pair.indexOf('=');
    if (at < 1) {
      throw new ApiError(0, `${field}: '${pair}' is not allowed: expected KEY=VALUE pairs separated by commas`, field);
    }
    tags[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
  }
  return tags;
}

export class FormModel {
  /** `software`: where the packages of a cloud cluster come from (none: the server's). */
  constructor(
    private _clusters: ClustersModel,
    readonly software: SoftwareModel | null = null
  ) {}

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get values(): Readonly<Record<Field, FieldValue>> {
    return this._values;
  }

  get sizing(): Sizing {
    return this._sizing;
  }

  /** The schema of the backend chosen now (null until the server answered). */
  get schema(): IFormSchema | null {
    return this._schemas.get(String(this._values.backend)) ?? null;
  }

  /** The fields the chosen backend's form has, in order (shown or not by the way of sizing). */
  get fields(): Field[] {
    return this.schema?.['x-form'] ?? [];
  }

  /** One field's schema on the chosen backend. */
  field(name: Field): IFieldSchema | undefined {
    return this.schema?.properties[name];
  }

  /** Errors per field: Create's answer (until that field changes or Create succeeds) over
   * the last estimate's, so an estimate that passes does not hide a limit Create refused. */
  get errors(): ReadonlyMap<string, string> {
    return new Map([...this._estimateErrors, ...this._submitErrors]);
  }

  /** Warnings per field, which do not stop a request: on the local backend, a worker asking
   * for more vCPUs or memory than this machine has. */
  get warnings(): ReadonlyMap<string, string> {
    const found = new Map<string, string>();
    const here = this.schema?.['x-machine'];
    if (!here) {
      return found;
    }
    const cpu = String(this._values.worker_cpu ?? '').trim();
    if (WHOLE.test(cpu) && Number(cpu) > here.cpu) {
      found.set('worker_cpu', `this machine has ${here.cpu} vCPUs: workers asking for ${cpu} will share them`);
    }
    const memory = String(this._values.worker_memory ?? '').trim();
    const asked = memory ? parseBytes(memory) : null;
    if (asked !== null && asked > here.memory) {
      found.set(
        'worker_memory',
        `this machine has ${bytes(here.memory)} of memory: workers given ${memory} each will swap or be killed`
      );
    }
    return found;
  }

  /** An error that names no field shown in the form. */
  get formError(): string | null {
    return this._formError;
  }

  get estimate(): IEstimate | null {
    return this._estimate;
  }

  get catalog(): ICatalog | null {
    return this._catalog;
  }

  /** Who `me` is from the server, for a cloud backend (null until known, or on local). */
  get reach(): IReach | null {
    return this.isLocal ? null : (this._reach.get(String(this._values.backend)) ?? null);
  }

  get submitting(): boolean {
    return this._submitting;
  }

  /** Whether the estimate shown is older than the fields (a newer one is on its way). */
  get estimating(): boolean {
    return this._estimating;
  }

  get isLocal(): boolean {
    return this._values.backend === 'local';
  }

  /** Whether Create sends an environment: a cloud backend syncing packages (no requirements file). */
  get syncsEnvironment(): boolean {
    return (
      !this.isLocal && this._values.package_sync === true && String(this._values.software ?? '').trim() === ''
    );
  }

  /** Take the packages from this notebook's kernel (its panel id), or SERVER_CHOICE. */
  pickSoftware(id: string): void {
    this._submitErrors.delete(ENVIRONMENT);
    this.software?.pick(id);
    this._changed.emit();
  }

  /** Whether a field is shown: the chosen backend's form has it and, on a cloud, it belongs
   * to the chosen way of sizing workers (instance types, or CPU / memory / GPU). */
  shown(field: Field): boolean {
    const ui = this.field(field)?.['x-ui'];
    if (!ui || !this.fields.includes(field)) {
      return false;
    }
    return this.isLocal || ui.sizing === null || ui.sizing === this._sizing;
  }

  /** Read the server's schema (defaults, limits, fields) and the catalog, once (when the form first shows). */
  load(): Promise<void> {
    if (!this._loaded) {
      this._loaded = this._load();
    }
    return this._loaded;
  }

  private async _load(): Promise<void> {
    // The lab settings' backend when they name one, else the server's default backend.
    const backend = this._touched.has('backend') ? String(this._values.backend) : null;
    try {
      const schema = await requestAPI<IFormSchema>('schema', { query: { backend } });
      this._schemas.set(schema['x-backend'], schema);
      for (const [name, prop] of Object.entries(schema.properties)) {
        if (prop['x-ui'] && !this._touched.has(name)) {
          this._values[name] = display(prop.default);
        }
      }
    } catch (error) {
      this._formError = (error as Error).message;
    }
    await this._loadCatalog();
    this._scheduleEstimate();
  }

  /** The schema of a backend chosen after the first (its bounds and fields differ). */
  private async _loadSchema(backend: string): Promise<void> {
    if (this._schemas.has(backend)) {
      return;
    }
    try {
      this._schemas.set(backend, await requestAPI<IFormSchema>('schema', { query: { backend } }));
    } catch (error) {
      this._formError = (error as Error).message;
    }
  }

  /** Pre-fill from the lab settings; what the user typed in this form stays. */
  applySettings(labDefaults: Record<string, unknown>): void {
    for (const [name, value] of Object.entries(labDefaults)) {
      if (!this._typed.has(name)) {
        this._values[name] = display(value);
        this._touched.add(name);
      }
    }
    if (Array.isArray(labDefaults.worker_vm_types) && labDefaults.worker_vm_types.length) {
      this._sizing = 'types';
    }
    if (this._loaded) {
      void this._loadSchema(String(this._values.backend)).then(() => {
        void this._loadCatalog();
        this._scheduleEstimate();
      });
    }
  }

  set(field: Field, value: FieldValue): void {
    this._values[field] = value;
    this._touched.add(field);
    this._typed.add(field);
    this._estimateErrors.delete(field);
    this._submitErrors.delete(field);
    if (field === 'backend' || field === 'package_sync' || field === 'software') {
      this._submitErrors.delete(ENVIRONMENT); // about an environment this form may no longer send
    }
    // Where and what to run depend on the backend, zones on the region: start those over.
    const stale: Field[] = field === 'backend' ? ['region', 'zone', 'worker_vm_types'] : field === 'region' ? ['zone'] : [];
    for (const name of stale) {
      this._values[name] = name === 'worker_vm_types' ? [] : '';
      this._touched.delete(name);
      this._typed.delete(name);
    }
    if (field === 'backend') {
      void this._loadSchema(String(value)).then(() => {
        void this._loadCatalog();
        this._scheduleEstimate();
      });
    } else if (stale.length) {
      void this._loadCatalog();
    }
    this._scheduleEstimate();
  }

  setSizing(sizing: Sizing): void {
    this._sizing = sizing;
    this._scheduleEstimate();
  }

  /** The request body: fields shown and set here or in the lab settings, as ClusterSpec takes them. */
  spec(): Record<string, unknown> {
    const body: Record<string, unknown> = {};
    for (const field of this.fields) {
      if (!this.shown(field) || !(this._touched.has(field) || ALWAYS_SENT.has(field))) {
        continue;
      }
      const value = this._values[field] ?? '';
      const widget = this.field(field)?.['x-ui']?.widget;
      if (typeof value === 'boolean') {
        body[field] = value;
      } else if (Array.isArray(value)) {
        if (value.length) {
          body[field] = value;
        }
      } else if (value.trim() !== '') {
        const text = value.trim();
        if (widget === 'pairs') {
          body[field] = parseTags(text, field);
        } else {
          body[field] = widget === 'integer' && WHOLE.test(text) ? Number(text) : text;
        }
      }
    }
    return body;
  }

  /** Errors this form can tell without asking: an integer field that is not a whole number,
   * or out of the schema's bounds (ClusterSpec's, and the admin's limits, named). */
  check(): Map<string, string> {
    const found = new Map<string, string>();
    for (const field of this.fields) {
      const prop = this.field(field);
      const text = String(this._values[field] ?? '').trim();
      if (!prop || prop['x-ui']?.widget !== 'integer' || !this.shown(field) || text === '') {
        continue;
      }
      const limit = prop['x-limit'] ? ` (${prop['x-limit']})` : '';
      const n = Number(text);
      if (!WHOLE.test(text)) {
        found.set(field, `${field}: '${text}' is not allowed: expected a whole number`);
      } else if (prop.minimum !== undefined && n < prop.minimum) {
        found.set(field, `${field}: ${text} is not allowed: expected at least ${prop.minimum}`);
      } else if (prop.maximum !== undefined && n > prop.maximum) {
        found.set(field, `${field}: ${text} is not allowed: expected at most ${prop.maximum}${limit}`);
      }
    }
    return found;
  }

  /** Create the cluster; resolves to it, or to null with the errors shown at their fields.
   * A cloud cluster that syncs packages first has the chosen kernel send its environment
   * (`software.error` says why it could not: then nothing is created). */
  async submit(): Promise<ICluster | null> {
    const problems = this.check();
    if (problems.size) {
      this._submitErrors = problems;
      this._changed.emit();
      return null;
    }
    this._submitting = true;
    this._changed.emit();
    try {
      const body = this.spec();
      if (this.syncsEnvironment && this.software) {
        this._submitErrors.delete(ENVIRONMENT);
        let hash: string | null;
        try {
          hash = await this.software.send();
        } catch {
          return null; // shown at the software line
        }
        if (hash) {
          body.environment = hash;
        }
      }
      const cluster = await this._clusters.create(body);
      this._values.name = '';
      this._touched.delete('name');
      this._typed.delete('name');
      this._estimateErrors.clear();
      this._submitErrors.clear();
      this._formError = null;
      return cluster;
    } catch (error) {
      this._submitErrors.clear();
      this._showError(error as Error, this._submitErrors);
      return null;
    } finally {
      this._submitting = false;
      this._changed.emit();
    }
  }

  private async _loadReach(backend: string): Promise<void> {
    if (backend === 'local' || this._reach.has(backend)) {
      return;
    }
    try {
      this._reach.set(backend, await requestAPI<IReach>('reach', { query: { backend } }));
      this._changed.emit();
    } catch {
      // the hint only: the field and Create say what is wrong
    }
  }

  private async _loadCatalog(): Promise<void> {
    const backend = String(this._values.backend);
    void this._loadReach(backend);
    const region = this.isLocal ? '' : String(this._values.region ?? '');
    const call = ++this._catalogCall;
    try {
      const catalog = await requestAPI<ICatalog>('catalog', { query: { backend, region } });
      if (call !== this._catalogCall) {
        return;
      }
      this._catalog = catalog;
      this._estimateErrors.delete('backend');
    } catch (error) {
      if (call !== this._catalogCall) {
        return;
      }
      this._catalog = null;
      this._showError(error as Error, this._estimateErrors);
    }
    this._changed.emit();
  }

  private _scheduleEstimate(): void {
    window.clearTimeout(this._timer);
    this._timer = window.setTimeout(() => void this._refreshEstimate(), ESTIMATE_DELAY);
    ++this._estimateCall; // an answer on its way is for older fields: not to be shown
    this._estimating = true;
    this._changed.emit();
  }

  private async _refreshEstimate(): Promise<void> {
    const call = ++this._estimateCall;
    if (!this.schema) {
      this._estimating = false; // the chosen backend's schema, once read, schedules the estimate
      this._changed.emit();
      return;
    }
    const problems = this.check();
    if (problems.size) {
      // Told here, as the server would: no request for values it must refuse.
      this._estimate = null;
      this._estimateErrors = problems;
      this._formError = null;
      this._estimating = false;
      this._changed.emit();
      return;
    }
    try {
      const estimate = await requestAPI<IEstimate>('estimate', { method: 'POST', body: this.spec() });
      if (call !== this._estimateCall) {
        return;
      }
      this._estimate = estimate;
      this._estimateErrors.clear();
      this._formError = null;
    } catch (error) {
      if (call !== this._estimateCall) {
        return;
      }
      this._estimate = null;
      this._estimateErrors.clear();
      this._showError(error as Error, this._estimateErrors);
    }
    this._estimating = false;
    this._changed.emit();
  }

  /** Put a failed request's messages at the fields they name (into `errors`), or above Create. */
  private _showError(error: Error, errors: Map<string, string>): void {
    const byField = error instanceof ApiError ? error.byField() : new Map<string, string>();
    let placed = false;
    for (const [field, message] of byField) {
      if (this.shown(field)) {
        errors.set(field, message);
        placed = true;
      } else if (field.split('.')[0] === ENVIRONMENT && this.syncsEnvironment && !errors.has(ENVIRONMENT)) {
        errors.set(ENVIRONMENT, message);
        placed = true;
      }
    }
    this._formError = placed ? null : error.message;
  }

  /** Every field's value, from the schema's defaults once it is read. */
  private _values: Record<Field, FieldValue> = {};
  /** The schema of each backend chosen so far. */
  private _schemas = new Map<string, IFormSchema>();
  private _sizing: Sizing = 'resources';
  private _loaded: Promise<void> | null = null;
  /** Fields sent with a request: set by the user or by the lab settings. */
  private _touched = new Set<Field>();
  /** Fields the user typed into; lab settings no longer overwrite them. */
  private _typed = new Set<Field>();
  private _estimateErrors = new Map<string, string>();
  private _submitErrors = new Map<string, string>();
  private _formError: string | null = null;
  private _estimate: IEstimate | null = null;
  private _catalog: ICatalog | null = null;
  private _reach = new Map<string, IReach>();
  private _submitting = false;
  private _estimating = false;
  private _timer = 0;
  private _catalogCall = 0;
  private _estimateCall = 0;
  private _changed = new Signal<this, void>(this);
}
