/**
 * The new-cluster form's state, apart from its view: field values (server defaults from
 * its dask config, then the lab settings, then what the user typed), the catalog for the
 * chosen backend and region, a debounced estimate and the
 * errors the server names per field. Only fields the user set (or the lab settings set)
 * are sent: the server fills in the rest from its own config. A cloud cluster that syncs
 * packages gets the environment of a notebook's kernel (`software`), sent on Create.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { ApiError, requestAPI } from '../request';
import { ICatalog, ICluster, IEstimate, IFieldDefault, IReach } from '../types';
import { ClustersModel } from './clusters';
import { SoftwareModel } from './software';

export type FieldValue = string | string[] | boolean;
export type Sizing = 'types' | 'resources';

export const FIELDS = [
  'name',
  'backend',
  'region',
  'zone',
  'worker_vm_types',
  'worker_cpu',
  'worker_memory',
  'worker_gpu',
  'n_workers',
  'spot_policy',
  'allow_ingress_from',
  'idle_timeout',
  'tags',
  'package_sync',
  'software'
] as const;
export type Field = (typeof FIELDS)[number];

/** Fields that mean nothing on the local backend. */
const CLOUD_ONLY: ReadonlySet<Field> = new Set([
  'region',
  'zone',
  'worker_vm_types',
  'worker_gpu',
  'spot_policy',
  'allow_ingress_from'
]);
const BY_TYPE: ReadonlySet<Field> = new Set(['worker_vm_types']);
const BY_RESOURCES: ReadonlySet<Field> = new Set(['worker_cpu', 'worker_memory', 'worker_gpu']);
const INTEGERS: ReadonlySet<Field> = new Set(['n_workers', 'worker_cpu', 'worker_gpu']);
const ALWAYS_SENT: ReadonlySet<Field> = new Set(['backend', 'n_workers']);
const ESTIMATE_DELAY = 400;
/** Where the form shows errors about the environment sent (the software line). */
export const ENVIRONMENT = 'environment';

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

function parseTags(text: string): Record<string, string> {
  const tags: Record<string, string> = {};
  for (const pair of text.split(',').map(p => p.trim()).filter(Boolean)) {
    const at = pair.indexOf('=');
    if (at < 1) {
      throw new ApiError(0, `tags: '${pair}' is not allowed: expected KEY=VALUE pairs separated by commas`, 'tags');
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

  get help(): ReadonlyMap<string, string> {
    return this._help;
  }

  /** Errors per field: Create's answer (until that field changes or Create succeeds) over
   * the last estimate's, so an estimate that passes does not hide a limit Create refused. */
  get errors(): ReadonlyMap<string, string> {
    return new Map([...this._estimateErrors, ...this._submitErrors]);
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
    return !this.isLocal && this._values.package_sync === true && String(this._values.software).trim() === '';
  }

  /** Take the packages from this notebook's kernel (its panel id), or SERVER_CHOICE. */
  pickSoftware(id: string): void {
    this._submitErrors.delete(ENVIRONMENT);
    this.software?.pick(id);
    this._changed.emit();
  }

  /** Whether a field is shown for the chosen backend and way of sizing workers. */
  shown(field: Field): boolean {
    if (this.isLocal && CLOUD_ONLY.has(field)) {
      return false;
    }
    if (this.isLocal) {
      return true;
    }
    return this._sizing === 'types' ? !BY_RESOURCES.has(field) : !BY_TYPE.has(field);
  }

  /** Read the server's defaults and the catalog, once (when the form first shows). */
  load(): Promise<void> {
    if (!this._loaded) {
      this._loaded = this._load();
    }
    return this._loaded;
  }

  private async _load(): Promise<void> {
    try {
      const { fields } = await requestAPI<{ fields: IFieldDefault[] }>('defaults');
      for (const { name, default: value, help } of fields) {
        this._help.set(name, help);
        if ((FIELDS as readonly string[]).includes(name) && !this._touched.has(name as Field)) {
          this._values[name as Field] = display(value);
        }
      }
    } catch (error) {
      this._formError = (error as Error).message;
    }
    await this._loadCatalog();
    this._scheduleEstimate();
  }

  /** Pre-fill from the lab settings; what the user typed in this form stays. */
  applySettings(labDefaults: Record<string, unknown>): void {
    for (const [name, value] of Object.entries(labDefaults)) {
      if ((FIELDS as readonly string[]).includes(name) && !this._typed.has(name as Field)) {
        this._values[name as Field] = display(value);
        this._touched.add(name as Field);
      }
    }
    if (Array.isArray(labDefaults.worker_vm_types) && labDefaults.worker_vm_types.length) {
      this._sizing = 'types';
    }
    if (this._loaded) {
      this._scheduleEstimate();
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
    if (stale.length) {
      void this._loadCatalog();
    }
    this._scheduleEstimate();
  }

  setSizing(sizing: Sizing): void {
    this._sizing = sizing;
    this._scheduleEstimate();
  }

  /** The request body: fields set here or in the lab settings, as ClusterSpec takes them. */
  spec(): Record<string, unknown> {
    const body: Record<string, unknown> = {};
    for (const field of FIELDS) {
      if (!this.shown(field) || !(this._touched.has(field) || ALWAYS_SENT.has(field))) {
        continue;
      }
      const value = this._values[field];
      if (typeof value === 'boolean') {
        body[field] = value;
      } else if (Array.isArray(value)) {
        if (value.length) {
          body[field] = value;
        }
      } else if (value.trim() !== '') {
        const text = value.trim();
        if (field === 'tags') {
          body.tags = parseTags(text);
        } else {
          body[field] = INTEGERS.has(field) && /^-?\d+$/.test(text) ? Number(text) : text;
        }
      }
    }
    return body;
  }

  /** Create the cluster; resolves to it, or to null with the errors shown at their fields.
   * A cloud cluster that syncs packages first has the chosen kernel send its environment
   * (`software.error` says why it could not: then nothing is created). */
  async submit(): Promise<ICluster | null> {
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
    const region = this.isLocal ? '' : String(this._values.region);
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
      if ((FIELDS as readonly string[]).includes(field) && this.shown(field as Field)) {
        errors.set(field, message);
        placed = true;
      } else if (field.split('.')[0] === ENVIRONMENT && this.syncsEnvironment && !errors.has(ENVIRONMENT)) {
        errors.set(ENVIRONMENT, message);
        placed = true;
      }
    }
    this._formError = placed ? null : error.message;
  }

  private _values: Record<Field, FieldValue> = {
    name: '',
    backend: 'local',
    region: '',
    zone: '',
    worker_vm_types: [],
    worker_cpu: '',
    worker_memory: '',
    worker_gpu: '',
    n_workers: '',
    spot_policy: 'on-demand',
    allow_ingress_from: '',
    idle_timeout: '',
    tags: '',
    package_sync: true,
    software: ''
  };
  private _sizing: Sizing = 'resources';
  private _loaded: Promise<void> | null = null;
  /** Fields sent with a request: set by the user or by the lab settings. */
  private _touched = new Set<Field>();
  /** Fields the user typed into; lab settings no longer overwrite them. */
  private _typed = new Set<Field>();
  private _help = new Map<string, string>();
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
