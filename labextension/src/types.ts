/**
 * The shapes of the server extension's REST and WebSocket API (`/coiled-lab/api`).
 */

export type ClusterStatus =
  | 'pending'
  | 'provisioning'
  | 'running'
  | 'scaling'
  | 'stopping'
  | 'stopped'
  | 'error';

export const FINAL_STATES: ReadonlySet<ClusterStatus> = new Set(['stopped', 'error']);

/** A cluster's cost; `accrued` and `per_hour` are null when a price is not known (`unknown` says why). */
export interface ICost {
  accrued: number | null;
  per_hour: number | null;
  currency: string;
  as_of: number;
  unknown?: string;
}

/** Seconds left on each timeout; null where it is off or not counting (work runs, a client is connected). */
export interface ITimeLeft {
  idle_timeout: number | null;
  no_client_timeout: number | null;
  max_lifetime: number | null;
}

/** One cluster, as `GET /clusters/{id}` answers. */
export interface ICluster {
  id: string;
  name: string;
  /** Who created it (a JupyterHub user in team mode; this server's user otherwise). */
  owner?: string;
  backend: string;
  spec: { [field: string]: unknown } & {
    n_workers: number;
    region?: string | null;
    zone?: string | null;
  };
  status: ClusterStatus;
  target: 'running' | 'stopped';
  message: string | null;
  created_at: number;
  updated_at: number;
  stopped_at: number | null;
  workers: { target: number; launched: number; ready: number };
  scheduler_address: string | null;
  dashboard: string | null;
  time_left: ITimeLeft | null;
  cost: ICost | null;
}

/** A message of the events WebSocket. `seq` is set for persisted kinds; a `lifetime`
 * event's data is the cluster's new `time_left` (sent when work, a client or a timeout edit
 * moved the scheduler's clocks). */
export interface IClusterEvent {
  seq: number | null;
  cluster_id: string;
  time: number;
  kind: 'state' | 'progress' | 'log' | 'cost' | 'notification' | 'lifetime';
  data: { [key: string]: any };
}

/** One notification, as `GET /clusters/{id}/notifications` lists it. */
export interface INotification {
  time: number;
  kind: string;
  level: 'info' | 'warning' | 'error';
  message: string;
  key?: string;
}

export interface IEstimate {
  backend: string;
  per_hour: number;
  scheduler: number;
  workers: number;
  worker_each: number;
  n_workers: number;
  storage: number;
  currency: string;
  spot_savings: number;
  source: string;
  as_of: number;
  notes: string[];
  /** The cloud types priced (absent on the local backend). */
  worker_vm_type?: string;
  scheduler_vm_type?: string;
}

/** One type of a backend's catalog. Prices ($/hour) only where the catalog has them: the
 * local machine's (0), AWS's current spot price; cloud on-demand prices come from price
 * APIs one type at a time, so the estimate names the types it priced and their price. */
export interface IInstanceType {
  name: string;
  vcpu: number;
  memory: number;
  gpu: number;
  price_per_hour?: number | null;
  spot_price_per_hour?: number | null;
}

export interface ICatalog {
  backend: string;
  regions: { name: string; zones: string[] }[];
  instance_types: IInstanceType[];
}

/** Who `allow_ingress_from: me` is from the server (GET reach). */
export interface IReach {
  public_address: string | null;
  error: string | null;
  echo: string;
  network: string | null;
  private_address: string | null;
}

export interface ILogRecord {
  time: number;
  instance: string;
  role: string;
  level: string;
  message: string;
}

/** Where one cloud's credentials come from; never a secret. */
export interface ICredentialStatus {
  configured: boolean;
  source: string | null;
  account?: string | null;
  project?: string | null;
  region?: string | null;
  key_id_last4?: string | null;
  error?: string;
  available?: boolean;
}

export interface ICredentialsStatus {
  aws: ICredentialStatus;
  gcp: ICredentialStatus;
}

/** A software environment the server keeps (`POST /environments`, or `send()` in a kernel). */
export interface IEnvironmentSummary {
  hash: string;
  where: string;
  python: string;
  platform: string;
  /** How many distributions it has. */
  packages: number;
  pinned: number;
  /** What the index lacks: shipped as wheels built from these. */
  local: { name: string; version: string; origin: string; source: string | null }[];
  wheels: Record<string, number>;
  files: number;
  files_bytes: number;
  skipped: { item: string; reason: string }[];
  conda_only: string[];
  environ: string[];
}

/** Who this page acts for (`GET /me`): `team` when a shared coiled-lab service runs the
 * clusters (JupyterHub), where `admin` sees and may change everyone's. */
export interface IMe {
  name: string;
  admin: boolean;
  team: boolean;
}

/** One row of the activity log (`GET /audit`, admins only). */
export interface IAuditEntry {
  seq: number;
  time: number;
  actor: string;
  action: string;
  cluster_id: string | null;
  cluster_name: string | null;
  per_hour: number | null;
  detail: { [key: string]: unknown } | null;
}
