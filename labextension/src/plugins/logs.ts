import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { textEditorIcon } from '@jupyterlab/ui-components';

import { LogsModel } from '../models/logs';
import { CommandIDs, ICoiledLab, PALETTE_CATEGORY } from '../tokens';
import { FINAL_STATES } from '../types';
import { LogViewer } from '../views/logs';
import { pickCluster } from './pick';

const PLUGIN_ID = 'coiled-lab:logs';

/** A main-area log viewer per cluster. */
export const logsPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: "A cluster's logs in a main-area tab: follow, filters, older lines, copy.",
  autoStart: true,
  requires: [ICoiledLab, ISettingRegistry],
  optional: [ICommandPalette],
  activate: (app: JupyterFrontEnd, lab: ICoiledLab, registry: ISettingRegistry, palette: ICommandPalette | null) => {
    const { clusters } = lab;
    const open = new Map<string, MainAreaWidget<LogViewer>>();
    const settings = registry.load(PLUGIN_ID);

    app.commands.addCommand(CommandIDs.openLogs, {
      label: args => (args.id ? 'Logs' : 'Show Logs of a Dask Cluster…'),
      icon: textEditorIcon,
      execute: async args => {
        const cluster = await pickCluster(clusters, args, 'Logs of which cluster?');
        if (!cluster) {
          return;
        }
        let widget = open.get(cluster.id);
        if (!widget || widget.isDisposed) {
          const composite = (await settings).composite;
          const model = new LogsModel(cluster.id, {
            pageSize: composite.pageSize as number,
            followInterval: composite.followInterval as number,
            isLive: () => !FINAL_STATES.has(clusters.get(cluster.id)?.status ?? 'stopped')
          });
          widget = new MainAreaWidget({ content: new LogViewer(model) });
          widget.id = `coiled-lab-logs-${cluster.id}`;
          widget.title.label = `Logs: ${cluster.name}`;
          widget.title.icon = textEditorIcon;
          widget.title.closable = true;
          open.set(cluster.id, widget);
          app.shell.add(widget, 'main');
          void model.reload();
          model.setFollow(model.isLive());
        }
        app.shell.activateById(widget.id);
      }
    });
    palette?.addItem({ command: CommandIDs.openLogs, category: PALETTE_CATEGORY });
  }
};
