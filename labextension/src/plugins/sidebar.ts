import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, ICommandPalette, InputDialog, Notification, showDialog } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { FormModel } from '../models/form';
import { SoftwareModel } from '../models/software';
import { CommandIDs, ICoiledLab, PALETTE_CATEGORY } from '../tokens';
import { ClustersSidebar } from '../views/sidebar';
import { showNotices } from '../views/toasts';
import { pickCluster } from './pick';

const PLUGIN_ID = 'coiled-lab:sidebar';

/** The left-area panel with every cluster and the new-cluster form; scale and stop;
 * the server's notifications about clusters as lab notifications. */
export const sidebarPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The "Dask clusters in your cloud" sidebar: clusters, new-cluster form, scale and stop.',
  autoStart: true,
  requires: [ICoiledLab, ISettingRegistry],
  optional: [ILayoutRestorer, ICommandPalette, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    lab: ICoiledLab,
    registry: ISettingRegistry,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null
  ) => {
    const { clusters } = lab;
    // Packages of cloud clusters: from the active (or picked) notebook's kernel.
    const form = new FormModel(clusters, new SoftwareModel(notebooks));
    const sidebar = new ClustersSidebar({
      model: clusters,
      form,
      credentials: lab.credentials,
      notifications: lab.notifications,
      activity: lab.activity,
      commands: app.commands
    });
    app.shell.add(sidebar, 'left', { rank: 250 });
    restorer?.add(sidebar, sidebar.id);

    showNotices(clusters);

    void registry.load(PLUGIN_ID).then(settings => {
      const defaults = () => (settings.composite.defaults ?? {}) as Record<string, unknown>;
      form.applySettings(defaults());
      settings.changed.connect(() => form.applySettings(defaults()));
    });

    app.commands.addCommand(CommandIDs.showClusters, {
      label: 'Show Dask Clusters in Your Cloud',
      icon: sidebar.title.icon,
      execute: () => app.shell.activateById(sidebar.id)
    });
    app.commands.addCommand(CommandIDs.newCluster, {
      label: 'New Dask Cluster…',
      execute: () => {
        sidebar.setFormOpen(true);
        app.shell.activateById(sidebar.id);
      }
    });
    app.commands.addCommand(CommandIDs.scale, {
      label: args => (args.id ? 'Scale' : 'Scale a Dask Cluster…'),
      execute: async args => {
        const cluster = await pickCluster(clusters, args, 'Scale which cluster?');
        if (!cluster) {
          return;
        }
        let n = args.n_workers as number | undefined;
        if (n === undefined) {
          const answer = await InputDialog.getNumber({ title: `Workers for ${cluster.name}`, value: cluster.workers.target });
          if (!answer.button.accept || answer.value === null) {
            return;
          }
          n = answer.value;
        }
        try {
          await clusters.scale(cluster.id, n);
        } catch (error) {
          Notification.error(`Cannot scale ${cluster.name}: ${(error as Error).message}`, { autoClose: 8000 });
        }
      }
    });
    app.commands.addCommand(CommandIDs.stop, {
      label: args => (args.id ? 'Stop' : 'Stop a Dask Cluster…'),
      execute: async args => {
        const cluster = await pickCluster(clusters, args, 'Stop which cluster?');
        if (!cluster) {
          return;
        }
        const answer = await showDialog({
          title: `Stop ${cluster.name}?`,
          body: 'Its scheduler and workers stop, and whatever they hold in memory is lost.',
          buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop' })]
        });
        if (!answer.button.accept) {
          return;
        }
        try {
          await clusters.stop(cluster.id);
        } catch (error) {
          Notification.error(`Cannot stop ${cluster.name}: ${(error as Error).message}`, { autoClose: 8000 });
        }
      }
    });

    for (const command of [CommandIDs.showClusters, CommandIDs.newCluster, CommandIDs.scale, CommandIDs.stop]) {
      palette?.addItem({ command, category: PALETTE_CATEGORY });
    }
  }
};
