/**
 * coiled-lab's JupyterLab extension: one plugin per feature, all speaking only to the
 * server extension's REST and WebSocket API.
 */
import { activityPlugin } from './plugins/activity';
import { corePlugin } from './plugins/core';
import { credentialsPlugin } from './plugins/credentials';
import { dashboardPlugin } from './plugins/dashboard';
import { logsPlugin } from './plugins/logs';
import { notebookPlugin } from './plugins/notebook';
import { partnerPlugin } from './plugins/partner';
import { sidebarPlugin } from './plugins/sidebar';

export { ICoiledLab } from './tokens';

export default [
  corePlugin,
  sidebarPlugin,
  logsPlugin,
  dashboardPlugin,
  credentialsPlugin,
  activityPlugin,
  notebookPlugin,
  partnerPlugin
];
