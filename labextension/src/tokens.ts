/**
 * What the core plugin shares with the feature plugins.
 */
import { Token } from '@lumino/coreutils';

import { ActivityModel } from './models/activity';
import { ClustersModel } from './models/clusters';
import { CredentialsModel } from './models/credentials';
import { NotificationsModel } from './models/notifications';

export interface ICoiledLab {
  /** Every cluster, kept current by the events WebSocket. */
  readonly clusters: ClustersModel;
  /** Where the server's cloud credentials come from. */
  readonly credentials: CredentialsModel;
  /** What the server told about each cluster. */
  readonly notifications: NotificationsModel;
  /** Who this page acts for, and (admins) the activity log. */
  readonly activity: ActivityModel;
}

export const ICoiledLab = new Token<ICoiledLab>(
  'coiled-lab:ICoiledLab',
  'The clusters and credentials status of the coiled-lab server extension.'
);

/** Command ids, shared by the plugins that define them and the views that run them. */
export namespace CommandIDs {
  export const showClusters = 'coiled-lab:show-clusters';
  export const newCluster = 'coiled-lab:new-cluster';
  export const scale = 'coiled-lab:scale';
  export const stop = 'coiled-lab:stop';
  export const openDashboard = 'coiled-lab:open-dashboard';
  export const openLogs = 'coiled-lab:open-logs';
  export const insertClient = 'coiled-lab:insert-client';
  export const copyClient = 'coiled-lab:copy-client';
  export const credentials = 'coiled-lab:credentials';
  export const activity = 'coiled-lab:activity';
}

export const PALETTE_CATEGORY = 'Dask clusters in your cloud';
