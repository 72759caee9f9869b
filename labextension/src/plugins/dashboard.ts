import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, Notification } from '@jupyterlab/apputils';

import { clustersIcon } from '../icons';
import { dashboardURL } from '../request';
import { CommandIDs, ICoiledLab, PALETTE_CATEGORY } from '../tokens';
import { FINAL_STATES } from '../types';
import { DashboardFrame } from '../views/dashboard';
import { pickCluster } from './pick';

/** dask-labextension's command that points its panes at a dashboard, when it is installed. */
const DASK_POPULATE = 'dask:populate-dashboard-url';

/** A cluster's Dask dashboard in a lab tab, and in dask-labextension's panes. */
export const dashboardPlugin: JupyterFrontEndPlugin<void> = {
  id: 'coiled-lab:dashboard',
  description: "A cluster's Dask dashboard in a lab tab through the server's proxy; handed to dask-labextension.",
  autoStart: true,
  requires: [ICoiledLab],
  optional: [ICommandPalette],
  activate: (app: JupyterFrontEnd, lab: ICoiledLab, palette: ICommandPalette | null) => {
    const { clusters } = lab;
    const open = new Map<string, MainAreaWidget<DashboardFrame>>();

    // A stopping cluster's dashboard is going away: close its tab before the page in it
    // starts knocking on a door that is gone.
    clusters.changed.connect(() => {
      for (const [id, widget] of open) {
        const cluster = clusters.get(id);
        if (!widget.isDisposed && (!cluster || cluster.target === 'stopped' || FINAL_STATES.has(cluster.status))) {
          widget.dispose();
          Notification.info(`${cluster?.name ?? id} is stopping: its dashboard tab was closed.`, { autoClose: 5000 });
        }
        if (widget.isDisposed) {
          open.delete(id);
        }
      }
    });

    app.commands.addCommand(CommandIDs.openDashboard, {
      label: args => (args.id ? 'Dashboard' : 'Open the Dashboard of a Dask Cluster…'),
      icon: clustersIcon,
      execute: async args => {
        const cluster = await pickCluster(clusters, args, 'Dashboard of which cluster?');
        if (!cluster) {
          return;
        }
        if (!cluster.dashboard) {
          Notification.warning(`${cluster.name} is ${cluster.status}: it has no dashboard yet.`, { autoClose: 5000 });
          return;
        }
        let widget = open.get(cluster.id);
        if (!widget || widget.isDisposed) {
          widget = new MainAreaWidget({ content: new DashboardFrame(dashboardURL(cluster.id, 'status')) });
          widget.id = `coiled-lab-dashboard-${cluster.id}`;
          widget.title.label = `Dashboard: ${cluster.name}`;
          widget.title.icon = clustersIcon;
          widget.title.closable = true;
          open.set(cluster.id, widget);
          app.shell.add(widget, 'main');
        }
        app.shell.activateById(widget.id);
        if (app.commands.hasCommand(DASK_POPULATE)) {
          await app.commands.execute(DASK_POPULATE, { url: dashboardURL(cluster.id) });
        }
      }
    });
    palette?.addItem({ command: CommandIDs.openDashboard, category: PALETTE_CATEGORY });
  }
};
